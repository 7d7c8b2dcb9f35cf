"""The ClientApp (simulation and deployment alike): local training per task, DP-SGD, a site's
terms and readers for its own image files. The site daemon is `medfed.client.site_daemon`."""
