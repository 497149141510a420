# preview-bot's container image: `docker build -t preview-bot .`
#
# Two stages: `build` installs the pinned dependencies (requirements.lock) and the bot into a
# venv at /opt/venv; the runtime stage copies only that venv, so pip, setuptools and the source
# tree stay behind. The runtime needs no writable path at all (readOnlyRootFilesystem works);
# the chart still mounts an emptyDir at /tmp for libraries that want a scratch file.
#
# tests/deploy/test_image.py runs this file's steps without Docker (there is no engine in CI):
# keep to FROM, ARG, ENV, WORKDIR, COPY, RUN, USER, EXPOSE, LABEL, ENTRYPOINT and CMD, and
# refer to the venv as $VIRTUAL_ENV in RUN lines so the test can relocate it.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG PIP_VERSION=26.3
ARG SETUPTOOLS_VERSION=84.2.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv
WORKDIR /src
# Build tools, pinned, in this stage only: the venv gets no pip (--without-pip) and is filled by
# this stage's pip through --python.
RUN python -m pip install "pip==${PIP_VERSION}" "setuptools==${SETUPTOOLS_VERSION}" \
    && python -m venv --without-pip "$VIRTUAL_ENV"
# Dependencies first, so a code change reuses this layer. --no-deps: the lock is the whole
# closure, so nothing unpinned can slip in; `pip check` below proves it is complete.
COPY requirements.lock ./
RUN python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir dist . \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-deps dist/*.whl \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" check

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/data-literate/preview-bot
LABEL org.opencontainers.image.title="preview-bot" \
      org.opencontainers.image.description="A GitHub App that gives each labeled pull request a live preview on Kubernetes through Argo CD." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; the .pyc files pip compiled at
# install time are used, and no attempt is made to write new ones. HOME=/tmp: anything that
# wants a home directory gets the one writable place (the chart's emptyDir).
ENV VIRTUAL_ENV=/opt/venv
ENV PATH="${VIRTUAL_ENV}/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# A numeric, non-root user (10001 is outside the range images usually allocate), so Kubernetes'
# runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 preview-bot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin preview-bot
COPY --from=build ${VIRTUAL_ENV} ${VIRTUAL_ENV}
WORKDIR /
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["preview-bot"]
CMD ["serve"]
