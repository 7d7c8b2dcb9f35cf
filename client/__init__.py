"""The ClientApp (simulation and deployment alike): a site's round, with its terms, one
DP-SGD wrapper around the task's own loop and the round cache. The site daemon is
`medfed.client.site_daemon`; the tasks' code is `medfed.models`."""
