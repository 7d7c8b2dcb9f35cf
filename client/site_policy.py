"""What a deployed site agrees to train: its SITE.yaml ``policy`` applied to each round.

The coordinator decides a run's task, model and privacy; the site sees them in every
round's config record. A round outside the policy is refused before any model is built,
so a refusal costs nothing and leaves nothing behind. Each round's own spending is the
accountant's to check (`medfed.client.privacy`): the deployed site gives it the policy's
``max_epsilon`` as its budget, kept on disk in the site's ``state_dir``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from medfed.errors import MedfedError
from medfed.privacy import DP_MECHANISM

POLICY_REFUSED = 4002  # error code of a site that refuses a round its policy forbids


class PolicyRefusal(MedfedError):
    """The round asks for something the site's policy forbids."""


def check_round(policy: DictConfig, config) -> None:
    """Raise `PolicyRefusal` when ``config`` (a round's, already checked for shape) is
    outside ``policy``: its task, its model, or its differential privacy."""
    task, model = str(config["model-task"]), str(config["model-name"])
    if task not in policy.tasks:
        raise PolicyRefusal(f"task '{task}' is not allowed (policy.tasks: {', '.join(policy.tasks)})")
    if policy.models and model not in policy.models:
        raise PolicyRefusal(f"model '{model}' is not allowed (policy.models: {', '.join(policy.models)})")
    mechanism = str(config.get(DP_MECHANISM, "none"))
    if policy.require_dp and mechanism != "sample":
        raise PolicyRefusal(f"the run uses privacy mechanism '{mechanism}'; policy.require_dp asks for "
                            "sample-level differential privacy (privacy.mechanism: sample)")
    if policy.max_epsilon is None:
        return
    if mechanism != "sample":
        raise PolicyRefusal(f"the run uses privacy mechanism '{mechanism}', which this site cannot account; "
                            f"policy.max_epsilon={policy.max_epsilon} needs sample-level differential privacy")
    planned = float(config.get("dp-target-epsilon", 0.0))
    if planned > policy.max_epsilon:
        raise PolicyRefusal(f"the run plans to spend epsilon {planned:g} at each site, more than "
                            f"policy.max_epsilon={policy.max_epsilon:g}")
