"""A site's privacy budget and training limits are its own.

Rounds built by `server.plan.round_config`, then edited as a dishonest coordinator could,
are sent to the deployed ClientApp in-process (its site controls included): each is
refused with a message naming the round's setting and the site's. An honest round is
accounted at the site's delta with the site's accountant. A SITE.yaml with bad privacy
or limits values stops `medfed site check`, a simulation that breaks its virtual sites'
limits stops before the engine starts, and over random sequences of honest and
dishonest rounds a site never spends past its budget by dp-accounting's own reckoning.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import dp_accounting
import pytest
from conftest import FAST, REPO
from deployment_helpers import site_yaml
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from medfed.client.privacy import ACCOUNTANT_FILE, SiteAccountant, history_epsilon
from medfed.client.site_daemon.audit_log import read_audit_log
from medfed.client.site_policy import accept_round
from medfed.config import load_config
from medfed.federation.credentials import create_credentials
from medfed.server.plan import initial_weights, model_spec, round_config
from medfed.site_terms import RoundRefused, SitePrivacy, SiteTerms
from medfed.wire import BUDGET_EXHAUSTED, POLICY_REFUSED

ROUND = ["model.name=cnn", "train.local_steps=1", "train.batch_size=8", "train.device=cpu", "train.amp=false",
         "train.rounds=2", "logging.progress=false"]
DP = ["privacy.mechanism=sample", "privacy.noise_multiplier=1.0"]
N_TRAIN = 24  # deployment_helpers.site_npz: every round samples 8 of them, rate 1/3


@pytest.fixture(scope="module")
def creds(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("creds")
    create_credentials(out, "localhost", [], trial_sites=["north"])
    return out


def _site(tmp_path: Path, creds: Path, extra: str = "", policy: str = "", models: str | None = None) -> Path:
    path = site_yaml(tmp_path / "north", creds, policy=policy, extra=extra)
    if models is not None:
        path.write_text(path.read_text().replace("  tasks: [classification]\n  models: [cnn]\n", models))
    return path


def _round(*overrides: str, **edits) -> tuple[dict, ArrayRecord]:
    """A round's config and weights as medfed's ServerApp sends them, then ``edits`` made to
    the config as a coordinator could (``dp_delta=0.99`` sets ``dp-delta``, None removes the key)."""
    cfg = load_config(None, [*ROUND, *overrides])
    segmentation = cfg.task == "segmentation"
    spec = model_spec(cfg, 2, "segmentation" if segmentation else "binary", 1, 0 if segmentation else 28)
    config = round_config(cfg, spec, 1)
    config.update({key.replace("_", "-"): value for key, value in edits.items()})
    return {k: v for k, v in config.items() if v is not None}, ArrayRecord(initial_weights(cfg, spec))


def _send(site: Path, config: dict, arrays: ArrayRecord, app=None) -> Message:
    from medfed.client.site_daemon.deployed import app as deployed

    metadata = Metadata(run_id=11, message_id=f"m-{time.monotonic_ns()}", src_node_id=1, dst_node_id=2,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600,
                        message_type=MessageType.TRAIN, src_task_id=1, dst_task_id=2)
    message = Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), metadata=metadata)
    context = Context(run_id=11, node_id=2, node_config={"site-config": str(site)}, state=RecordDict(),
                      run_config={})
    return (app or deployed)(message, context)


def _refused(reply: Message, code: int, *words: str) -> None:
    assert reply.has_error() and reply.error.code == code, reply.error if reply.has_error() else "trained"
    assert all(w in reply.error.reason for w in words), reply.error.reason


def _nothing_spent(site: Path) -> bool:
    return not (site.parent / "state" / ACCOUNTANT_FILE).exists()


# ---- the coordinator's privacy settings ----------------------------------------------------


@pytest.mark.parametrize("coordinator_delta", [0.99, 1e9])
def test_the_coordinators_delta_is_never_used(tmp_path, creds, coordinator_delta):
    """At dp-delta 0.99 one round 'costs' epsilon 0; at the site's delta 1e-5 it costs 9.1."""
    site = _site(tmp_path, creds, "privacy: {max_epsilon: 1.0, delta: 1.0e-5}\n")
    config, arrays = _round(*DP, "privacy.noise_multiplier=0.5", dp_delta=coordinator_delta)
    _refused(_send(site, config, arrays), BUDGET_EXHAUSTED, "privacy budget", "at delta 1e-05",
             "privacy.max_epsilon=1")
    assert _nothing_spent(site)


@pytest.mark.parametrize("policy, noise", [("  require_dp: true\n", 0.0), ("", 0.3)])
def test_noise_below_the_sites_minimum_is_refused(tmp_path, creds, policy, noise):
    site = _site(tmp_path, creds, policy=policy)
    config, arrays = _round(*DP, f"privacy.noise_multiplier={noise}")
    _refused(_send(site, config, arrays), POLICY_REFUSED, f"dp-noise-multiplier {noise:g}",
             "privacy.min_noise_multiplier=0.5")
    log = read_audit_log(site.parent / "state" / "audit.log")
    assert [(e["direction"], e["status"]) for e in log] == [("in", "refused"), ("out", "refused")]
    assert _nothing_spent(site)


def test_a_target_whose_noise_is_below_the_minimum_is_refused(tmp_path, creds):
    site = _site(tmp_path, creds)
    config, arrays = _round("privacy.mechanism=sample", "privacy.target_epsilon=50")
    _refused(_send(site, config, arrays), POLICY_REFUSED, "dp-target-epsilon=50", "privacy.min_noise_multiplier")


def test_the_coordinator_cannot_choose_gdp(tmp_path, creds):
    site = _site(tmp_path, creds, "privacy: {max_epsilon: 6.0}\n")
    config, arrays = _round(*DP, dp_accountant="gdp")
    _refused(_send(site, config, arrays), POLICY_REFUSED, "dp-accountant 'gdp'", "privacy.accountant=rdp")


def test_the_sites_accountant_decides_whatever_the_round_names(tmp_path, creds):
    """Noise 0.65 for one step: PRV says epsilon 5.8, the site's RDP 6.3; the round's
    ``dp-accountant: prv`` does not make the site budget with PRV."""
    site = _site(tmp_path, creds, "privacy: {max_epsilon: 6.0, delta: 1.0e-5}\n")
    event = ((0.65, 1 / 3, 1),)
    assert history_epsilon("prv", event, 1e-5) < 6.0 < history_epsilon("rdp", event, 1e-5)
    config, arrays = _round(*DP, "privacy.noise_multiplier=0.65", dp_accountant="prv")
    _refused(_send(site, config, arrays), BUDGET_EXHAUSTED, "(rdp)", "privacy.max_epsilon=6")


@pytest.mark.parametrize("extra, edits, words", [
    ("", {"dp_max_grad_norm": 0.0}, ["dp-max-grad-norm 0"]),
    ("privacy: {max_grad_norm: 2.0}\n", {"dp_max_grad_norm": 50.0}, ["dp-max-grad-norm 50", "privacy.max_grad_norm=2"]),
    ("privacy: {max_epsilon_per_round: 1.0}\n", {}, ["this round alone would spend epsilon",
                                                     "privacy.max_epsilon_per_round=1"]),
])
def test_rounds_that_contradict_the_sites_privacy_terms_are_refused(tmp_path, creds, extra, edits, words):
    site = _site(tmp_path, creds, extra)
    config, arrays = _round(*DP, **edits)
    _refused(_send(site, config, arrays), POLICY_REFUSED, *words)
    assert _nothing_spent(site)


# ---- training limits -----------------------------------------------------------------------


@pytest.mark.parametrize("edits, words", [
    ({"local_steps": 10_000_000}, "local-steps 10000000 is above limits.max_local_steps=1000"),
    ({"local_steps": None, "local_epochs": 100_000}, "local-epochs 100000 is above limits.max_local_epochs=10"),
    ({"batch_size": 1}, "batch-size 1 is below limits.min_batch_size=8"),
    ({"lr": 1e6}, "lr 1e+06 is above limits.max_lr=1"),
    ({"momentum": 50.0}, "momentum 50 is above limits.max_momentum=0.99"),
    ({"weight_decay": -5.0}, "weight-decay -5 is below limits.min_weight_decay=0"),
])
def test_training_beyond_the_sites_limits_is_refused(tmp_path, creds, edits, words):
    site = _site(tmp_path, creds)
    config, arrays = _round(**edits)
    _refused(_send(site, config, arrays), POLICY_REFUSED, words)


BIG_UNET = ["task=segmentation", "model.name=unet", "partition.scheme=iid",
            "model.channels=[64,128,256,512,1024]", "model.strides=[2,2,2,2]"]


def test_a_model_above_the_sites_parameter_limit_is_refused(tmp_path, creds):
    segmentation = "  tasks: [segmentation]\n  models: [unet]\n"
    site = _site(tmp_path, creds, models=segmentation)
    config, arrays = _round(*BIG_UNET)
    _refused(_send(site, config, arrays), POLICY_REFUSED,
             "model 'unet' has 13,4", "parameters, above limits.max_parameters.default=5,000,000")
    roomy = SiteTerms(tasks=["segmentation"], models=["unet"])
    roomy.limits.max_parameters["unet"] = 2e7
    assert accept_round(roomy, config, N_TRAIN) is None  # allowed once the site raises its own limit


# ---- an honest round -----------------------------------------------------------------------


@pytest.mark.parametrize("delta_line, site_delta", [("delta: 1.0e-3, ", 1e-3), ("", 1 / (10 * N_TRAIN))])
def test_an_honest_round_reports_the_sites_epsilon_at_its_own_delta(tmp_path, creds, delta_line, site_delta):
    site = _site(tmp_path, creds, f"privacy: {{{delta_line}max_epsilon: 10.0}}\n")
    config, arrays = _round(*DP, dp_accountant="prv")  # and the run's own dp-delta 1e-5
    reply = _send(site, config, arrays)
    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    event = (1.0, 1 / 3, 1)
    opacus = RDPAccountant()
    opacus.history = [event]
    assert metrics["delta"] == pytest.approx(site_delta)
    assert metrics["epsilon"] == history_epsilon("rdp", (event,), site_delta)
    assert metrics["epsilon"] == pytest.approx(opacus.get_epsilon(site_delta), rel=1e-3)
    assert metrics["epsilon"] < opacus.get_epsilon(1e-5) * 0.9  # not the run's delta
    saved = json.loads((site.parent / "state" / ACCOUNTANT_FILE).read_text())
    assert [tuple(h) for h in saved["history"]] == [pytest.approx(event)]


# ---- one check for simulated sites ---------------------------------------------------------


def test_a_virtual_site_refuses_with_the_same_check(tmp_path):
    """The simulation's ClientApp, with a virtual site's terms from the experiment config."""
    from deployment_helpers import site_npz

    from medfed.client.app import make_client_app
    from medfed.client.site import Site
    from medfed.models.classification.data import read_npz_split
    from medfed.simulation.virtual_sites import simulated_terms

    data = site_npz(tmp_path / "data.npz")
    terms = simulated_terms(load_config(None, [*ROUND, *DP]))
    site = Site("site-000", 0, read_npz_split(data, "train"), read_npz_split(data, "val"), tmp_path / "state",
                device="cpu", terms=terms)
    config, arrays = _round(*DP, local_steps=10_000_000)
    reply = _send(tmp_path / "unused", config, arrays, app=make_client_app(lambda node_config: site))
    _refused(reply, POLICY_REFUSED, "local-steps 10000000 is above limits.max_local_steps=1000")


def test_a_simulation_that_breaks_its_sites_limits_stops_before_the_engine(cli, capsys, tmp_path, small_pneumonia):
    out = tmp_path / "run"
    code = cli("simulate", REPO / "configs" / "pneumonia-fedavg.yaml", *FAST, "train.local_steps=5000",
               "--output", out, data_dir=small_pneumonia)
    err = capsys.readouterr().err
    assert code == 2 and "train.local_steps" in err and "limits.max_local_steps=1000" in err, err
    assert not out.exists()


# ---- SITE.yaml ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, extra, setting", [
    ("", "privacy: {accountant: gdp}\n", "privacy.accountant"),
    ("", "privacy: {max_epsilon: -1}\n", "privacy.max_epsilon"),
    ("", "privacy: {delta: 0.1}\n", "privacy.delta=0.1 is not below 1/n"),
    ("  require_dp: true\n", "privacy: {min_noise_multiplier: 0}\n", "privacy.min_noise_multiplier"),
    ("  max_epsilon: 8.0\n", "", "privacy.max_epsilon"),
    ("", "limits: {min_batch_size: 0}\n", "limits.min_batch_size"),
    ("", "limits: {max_local_steps: 0}\n", "limits.max_local_steps"),
    ("", "limits: {max_lr: 1.0e-9}\n", "limits.max_lr"),
    ("", "limits: {max_parameters: {gpt: 1.0e+9}}\n", "limits.max_parameters"),
    ("", "limits: {batch: 3}\n", "limits.batch"),
])
def test_site_check_refuses_bad_privacy_and_limits(cli, capsys, tmp_path, creds, policy, extra, setting):
    site = _site(tmp_path, creds, extra, policy=policy)
    assert cli("site", "check", site) == 2
    assert setting in capsys.readouterr().err


# ---- the budget holds whatever the coordinator sends ---------------------------------------

MAX_EPSILON, SITE_DELTA, SITE_SIZE = 8.0, 1e-5, 120
BASE, _ = _round(*DP)

honest = st.fixed_dictionaries({
    "dp-noise-multiplier": st.sampled_from([1.0, 2.0, 4.0]),
    "local-steps": st.sampled_from([1, 5, 20]),
    "batch-size": st.sampled_from([8, 16]),
})
dishonest = st.fixed_dictionaries({
    "dp-delta": st.sampled_from([1e-9, 0.5, 0.99, 1e9]),
    "dp-noise-multiplier": st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0, 3.0]),
    "dp-accountant": st.sampled_from(["rdp", "prv", "gdp"]),
    "local-steps": st.sampled_from([None, 1, 50, 10_000_000]),  # None: left out, the epochs count
    "local-epochs": st.sampled_from([1, 3, 100_000]),
    "batch-size": st.sampled_from([1, 4, 8, 64]),
    "dp-mechanism": st.sampled_from(["sample", "sample", "none", "client"]),
})


def _dp_accounting_epsilon(stored: Path) -> float:
    """The site's spending from its stored history, by dp-accounting's RDP accountant."""
    if not stored.exists():
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    for noise, rate, steps in json.loads(stored.read_text())["history"]:
        step = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
        accountant.compose(dp_accounting.SelfComposedDpEvent(step, steps))
    return accountant.get_epsilon(SITE_DELTA)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(honest, dishonest), min_size=1, max_size=4))
def test_a_site_never_spends_past_its_budget(rounds):
    """Rounds the site accepts are recorded as training records them (Opacus counts each
    step taken); training itself is left out, it changes nothing in the accounting."""
    terms = SiteTerms(privacy=SitePrivacy(max_epsilon=MAX_EPSILON, delta=SITE_DELTA))
    with tempfile.TemporaryDirectory() as folder:
        for edits in rounds:
            spent = SiteAccountant(Path(folder), "rdp")
            try:
                config = {k: v for k, v in {**BASE, **edits}.items() if v is not None}
                private = accept_round(terms, config, SITE_SIZE, spent)
            except RoundRefused as exc:
                private = None
                event(f"refused ({exc.setting})")
            if private is not None:
                event("trained")
                assert math.isfinite(private.dp.noise_multiplier) and private.dp.delta == SITE_DELTA
                spent.save([*spent.history, private.event])
            assert _dp_accounting_epsilon(Path(folder) / ACCOUNTANT_FILE) <= MAX_EPSILON


def test_an_honest_sequence_is_trained_until_the_budget_ends(tmp_path):
    """The property above is not won by refusing everything: honest rounds are accepted
    until the next would pass the budget, and only then refused."""
    terms = SiteTerms(privacy=SitePrivacy(max_epsilon=MAX_EPSILON, delta=SITE_DELTA))
    config = {**BASE, "dp-noise-multiplier": 1.0, "local-steps": 20, "batch-size": 16}
    accepted = 0
    with pytest.raises(RoundRefused, match="privacy budget"):
        for _ in range(100):
            spent = SiteAccountant(tmp_path, "rdp")
            spent.save([*spent.history, accept_round(terms, config, SITE_SIZE, spent).event])
            accepted += 1
    assert accepted >= 2 and _dp_accounting_epsilon(tmp_path / ACCOUNTANT_FILE) <= MAX_EPSILON
