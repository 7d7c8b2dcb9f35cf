"""Names that the server and the sites share for differential privacy."""

DP_MECHANISM = "dp-mechanism"  # round config: none, sample or client
BUDGET_EXHAUSTED = 4001  # error code of a site that refuses a round for its privacy budget
UNIT_WEIGHT = "unit-weight"  # client-level DP: every site counts the same in the average
# what a site reports of its sample-level privacy spending, each round
PRIVACY_KEYS = ("epsilon", "delta", "noise-multiplier", "sample-rate", "max-grad-norm", "total-steps")
