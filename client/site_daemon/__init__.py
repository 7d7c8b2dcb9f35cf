"""The site daemon (`medfed site ...`): SITE.yaml, the data check, the SuperNode and its app
launcher, and the controls around the deployed ClientApp (app check, message checks, audit log)."""
