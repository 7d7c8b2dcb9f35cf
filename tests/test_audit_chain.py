"""The site's audit log is a hash chain with its head kept beside it: every way of editing,
reordering or cutting it is found and named by line, and concurrent appends keep it whole."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from deployment_helpers import site_npz
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict

from medfed.cli import EXIT_BAD_INPUT, main
from medfed.client.site_daemon.audit_log import (
    FIELDS,
    GENESIS,
    IN,
    OUT,
    AuditLog,
    entry_hash,
    read_audit_log,
    verify_audit_log,
)
from medfed.errors import MedfedError
from medfed.wire import weights_digest

N = 10  # entries in the log of most tests


def _message(rnd: int, kind: str = MessageType.TRAIN) -> Message:
    arrays = ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4) * rnd)})
    metadata = Metadata(run_id=11, message_id=f"m-{kind}-{time.monotonic_ns()}", src_node_id=1, dst_node_id=2,
                        reply_to_message_id="", group_id=str(rnd), created_at=time.time(), ttl=3600,
                        message_type=kind, src_task_id=1, dst_task_id=2)
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": rnd})}), metadata=metadata)


def _reply(msg: Message) -> Message:
    return Message(RecordDict({"arrays": msg.content.array_records["arrays"],
                               "metrics": MetricRecord({"train_loss": 0.5, "num-examples": 24})}), reply_to=msg)


def _write(path: Path, n: int = N) -> list[dict]:
    """A site's log of ``n`` entries: a run accepted, then rounds of messages in and out."""
    audit = AuditLog(path, "north")
    entries = [audit.event("run", "accepted", run_id=11, fab_sha256="ab" * 32, run_config_sha256="cd" * 32)]
    rnd = 1
    while len(entries) < n:
        msg = _message(rnd)
        entries.append(audit.record(msg, IN, "accepted"))
        if len(entries) < n:
            entries.append(audit.record(_reply(msg), OUT, "sent", rnd=rnd))
        rnd += 1
    return entries


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def _broken(path: Path, *words: str) -> str:
    with pytest.raises(MedfedError) as caught:
        verify_audit_log(path)
    message = str(caught.value)
    assert message.startswith(f"audit log {path}: ")
    assert all(w in message for w in words), message
    return message


@pytest.fixture
def log(tmp_path) -> Path:
    path = tmp_path / "state" / "audit.log"
    _write(path)
    return path


def test_entries_are_chained_and_an_intact_log_passes(log):
    entries = read_audit_log(log)
    assert verify_audit_log(log) == N == len(entries)
    assert [e["seq"] for e in entries] == list(range(N))
    assert entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] == entry_hash(a) for a, b in zip(entries, entries[1:]))
    assert json.loads(Path(f"{log}.head").read_text()) == {"seq": N - 1, "hash": entries[-1]["hash"]}
    for name in (log, Path(f"{log}.head")):
        assert os.stat(name).st_mode & 0o777 == 0o600, name
    assert not [p.name for p in log.parent.iterdir() if p.name.endswith(".tmp")]  # no head left half-written

    run, sent = entries[0], entries[2]
    assert run["direction"] == "site" and run["kind"] == "run" and run["status"] == "accepted"
    assert run["fab_sha256"] == "ab" * 32 and run["reason"] is None and run["site"] == "north"
    assert set(sent) == set(FIELDS) and sent["direction"] == "out" and sent["round"] == 1
    assert sent["weights_sha256"] == weights_digest(_message(1).content.array_records["arrays"])
    assert sent["metrics"] == ["num-examples", "train_loss"] and sent["bytes"] > 0


def test_a_missing_or_empty_log_without_head_has_no_entries(tmp_path):
    assert verify_audit_log(tmp_path / "nowhere" / "audit.log") == 0
    (tmp_path / "audit.log").write_text("")
    assert verify_audit_log(tmp_path / "audit.log") == 0


@pytest.mark.parametrize("field, value", [("bytes", 1), ("status", "refused"), ("metrics", [])])
def test_a_value_edited_in_a_middle_line_is_found(log, field, value):
    lines = _lines(log)
    entry = json.loads(lines[4])
    assert entry[field] != value
    lines[4] = json.dumps({**entry, field: value}) + "\n"
    log.write_text("".join(lines))
    _broken(log, "line 5 was changed (its hash does not match its content)")


def test_an_edit_that_rehashes_its_line_breaks_the_next_link(log):
    lines = _lines(log)
    entry = json.loads(lines[4])
    entry["status"] = "refused"
    entry["hash"] = entry_hash(entry)
    lines[4] = json.dumps(entry) + "\n"
    log.write_text("".join(lines))
    _broken(log, "line 6 does not follow line 5 (prev hash differs")


def test_two_swapped_lines_are_found(log):
    lines = _lines(log)
    lines[3], lines[4] = lines[4], lines[3]
    log.write_text("".join(lines))
    _broken(log, "line 4 does not follow line 3", "removed, inserted or reordered")


def test_a_deleted_middle_line_is_found(log):
    lines = _lines(log)
    del lines[5]
    log.write_text("".join(lines))
    _broken(log, "line 6 does not follow line 5")


def test_a_deleted_first_line_is_found(log):
    log.write_text("".join(_lines(log)[1:]))
    _broken(log, "line 1 does not start the chain")


def test_a_renumbered_entry_is_found(log):
    lines = _lines(log)
    entry = json.loads(lines[6])
    entry["seq"] = 9
    entry["hash"] = entry_hash(entry)
    lines[6:] = [json.dumps(entry) + "\n"]
    log.write_text("".join(lines))
    Path(f"{log}.head").write_text(json.dumps({"seq": 9, "hash": entry["hash"]}))
    _broken(log, "line 7: seq 6 expected, found 9")


def test_a_garbage_line_is_found(log):
    lines = _lines(log)
    lines.insert(2, "this line was typed by hand\n")
    log.write_text("".join(lines))
    _broken(log, "line 3 is not valid JSON")


def test_a_deleted_last_line_is_caught_by_the_head(log):
    log.write_text("".join(_lines(log)[:-1]))
    _broken(log, f"the log ends at entry {N - 2} (line {N - 1}) but its head file {log}.head says {N - 1}",
            "entries were removed from the end")


def test_an_emptied_log_is_caught_by_the_head(log):
    log.write_text("")
    _broken(log, "the log has no entries but its head file", "entries were removed")


def test_a_deleted_head_file_is_found(log):
    Path(f"{log}.head").unlink()
    _broken(log, "head file", "is missing", "cannot be shown complete")


@pytest.mark.parametrize("head, words", [
    ({"seq": N - 1, "hash": "f" * 64}, ["hash of its last entry", "differs from its head file"]),
    ({"seq": N + 2, "hash": "f" * 64}, [f"says {N + 2}", "removed from the end"]),
    ({"seq": N - 3, "hash": "f" * 64}, [f"says {N - 3}", "without updating the head"]),
    ("not json", ["is not valid JSON"]),
    ({"hash": "f" * 64}, ["does not hold an entry's seq and hash"]),
])
def test_an_edited_or_unreadable_head_is_found(log, head, words):
    Path(f"{log}.head").write_text(head if isinstance(head, str) else json.dumps(head))
    _broken(log, f"{log}.head", *words)


def test_the_next_append_keeps_a_cut_log_visible(log):
    # The head moves on with every append, so the disagreement is written into the chain.
    log.write_text("".join(_lines(log)[:-2]))
    AuditLog(log, "north").event("run", "accepted", run_id=12)
    entries = read_audit_log(log)
    note = entries[-2]
    assert (note["kind"], note["status"], note["seq"]) == ("audit", "head-mismatch", N - 2)
    assert entries[-1]["seq"] == N - 1 and entries[-1]["prev"] == note["hash"]
    _broken(log, f"line {N - 1} records that, when it was written, the head file",
            f"said entry {N - 1}", f"the log ended at entry {N - 3}")


def test_an_interrupted_append_is_continued_without_alarm(log):
    # Killed between writing its line and replacing the head: the head is one entry behind.
    head = Path(f"{log}.head")
    before = head.read_text()
    AuditLog(log, "north").event("run", "refused", reason="unsigned app", run_id=12)
    head.write_text(before)
    _broken(log, f"the log ends at entry {N} (line {N + 1})", f"says {N - 1}")
    AuditLog(log, "north").event("run", "accepted", run_id=13)
    assert verify_audit_log(log) == N + 2
    assert [e["kind"] for e in read_audit_log(log)[-2:]] == ["run", "run"]


def test_a_torn_last_line_is_reported_and_later_entries_stay_readable(log):
    with log.open("a") as out:
        out.write('{"time": "2026-')  # a write cut short by a crash
    AuditLog(log, "north").event("run", "accepted", run_id=12)
    assert json.loads(_lines(log)[-1])["seq"] == N
    _broken(log, f"line {N + 1} is not valid JSON")


def test_record_raises_oserror_when_the_log_cannot_be_written(tmp_path):
    (tmp_path / "state").write_text("a file where the folder should be")
    with pytest.raises(OSError):
        AuditLog(tmp_path / "state" / "audit.log", "north").record(_message(1), IN, "accepted")


def test_event_refuses_fields_the_log_sets(tmp_path):
    with pytest.raises(ValueError, match="hash"):
        AuditLog(tmp_path / "audit.log", "north").event("run", "accepted", hash="0" * 64)
    assert not (tmp_path / "audit.log").exists()


def _append_events(path: str, worker: int, count: int, start) -> None:
    audit = AuditLog(path, "north")
    start.wait()
    for i in range(count):
        audit.event("test", "accepted", worker=worker, i=i)


def test_concurrent_appends_from_several_processes_keep_one_chain(tmp_path):
    path = tmp_path / "state" / "audit.log"
    context = multiprocessing.get_context("fork")  # the workers only write files
    start = context.Barrier(4)
    workers = [context.Process(target=_append_events, args=(str(path), w, 25, start)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert verify_audit_log(path) == 100
    entries = read_audit_log(path)
    assert sorted((e["worker"], e["i"]) for e in entries) == [(w, i) for w in range(4) for i in range(25)]
    assert len({e["worker"] for e in entries[:25]}) > 1  # the processes did interleave


def _site(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    site_npz(folder / "data.npz")
    (folder / "SITE.yaml").write_text("""\
name: north
data: {format: npz, path: data.npz}
coordinator: {address: 127.0.0.1:8000}
insecure: true
state_dir: state
""")
    return folder / "SITE.yaml"


def test_cli_verifies_the_site_log(tmp_path, capsys):
    site = _site(tmp_path / "north")
    log = tmp_path / "north" / "state" / "audit.log"
    assert main(["site", "audit", "verify", str(site)]) == 0
    assert f"audit log {log}: no entries yet" in capsys.readouterr().err

    _write(log)
    assert main(["site", "audit", "verify", str(site)]) == 0
    assert f"audit log {log}: {N} entries, chain intact, head matches" in capsys.readouterr().err

    lines = _lines(log)
    lines[1] = lines[1].replace('"status": "accepted"', '"status": "refused"')
    log.write_text("".join(lines))
    assert main(["site", "audit", "verify", str(site)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "medfed:" in err and "line 2 was changed" in err
