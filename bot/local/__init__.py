"""Local mode: the production bot against a local git repository, files and maybe a cluster.

`preview-bot serve --local DIR` runs the same intake, queue, syncer and planner as production
(the `Bot` of bot/service.py); only the adapters behind the ports differ: GitHub is played by
files and a git repository (`github`, `repo`), the cluster by files (`cluster`) unless the
kubeconfig's cluster serves Argo CD's Application CRD. `simulate` plays GitHub's other half.
Production (`preview-bot serve`) never imports this package.
"""
