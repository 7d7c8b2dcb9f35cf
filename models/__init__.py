"""Tasks and their networks, below everything else: the task table (`medfed.tasks`)
and one folder per task with the same files (data, network, train, metrics, pictures),
the loop pieces every task shares, the model's wire form (`ModelSpec`). Runs wherever a
model is built, trained or scored: in the ClientApp, the ServerApp and the baselines."""
