"""The site daemon's launcher: takes ClientApp tasks from the SuperNode, runs medfed's.

``medfed site start`` runs ``flower-supernode --isolation process``, so the SuperNode
starts no ``flower-superexec`` of its own (which would start ``flwr-clientapp``: install
the FAB, import whatever it names). This launcher takes its place: it asks the SuperNode's
Runtime API (on 127.0.0.1) for ClientApp tasks, as Flower's SuperExec does, and starts one
`medfed.client.site_daemon.app_process` per task, which checks the run's app before it runs medfed's
installed ClientApp. Any other kind of task is never acquired.

Each task is still a process of its own, forked from a fork server that imported medfed's
ClientApp once: a fresh interpreter spent 8-9 s of CPU importing torch, Flower, MONAI and
Opacus for every train and evaluate message (34-54 s on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
import time

from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient

POLL_SECONDS = 1.0
log = logging.getLogger("medfed.site")


# imported once by the fork server, before any task: what every task imports
PRELOAD = ["medfed.client.site_daemon.app_process", "medfed.client.site_daemon.deployed"]


def task_arguments(runtime_api_address: str, token: str, site_yaml: str) -> list[str]:
    return ["--runtime-api-address", runtime_api_address, "--token", token, "--site-config", site_yaml]


def _task_main(argv: list[str]) -> None:
    """Runs in the task's process; the launcher itself never imports the ClientApp."""
    from medfed.client.site_daemon.app_process import main

    sys.exit(main(argv))  # its result is the task process's exit code


def task_starter():
    """Starts a task's process (forked from the fork server, which it starts on first use)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)

    def start(arguments: list[str]) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_task_main, args=(arguments,), name="medfed-clientapp")
        process.start()
        return process

    return start


def launch_tasks(runtime_api_address: str, site_yaml: str, max_polls: int | None = None) -> None:
    """Acquire ClientApp tasks and start a medfed app process for each, until stopped
    (or after ``max_polls`` polls). Ended children are reaped on every poll."""
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker())
    start = task_starter()
    running: list[multiprocessing.process.BaseProcess] = []
    polls = 0
    try:
        while max_polls is None or polls < max_polls:
            polls += 1
            running = [p for p in running if p.is_alive()]  # is_alive reaps an ended process
            try:
                reply = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
            except Exception as exc:  # noqa: BLE001 (the SuperNode is starting or restarting: ask again)
                log.debug("no answer from the SuperNode's Runtime API: %s", exc)
                time.sleep(POLL_SECONDS)
                continue
            if reply.HasField("task") and reply.token:
                if reply.task.type != TaskType.CLIENT_APP.value:  # never asked for; never run
                    log.error("the SuperNode offered a %s task; a site runs ClientApp tasks only", reply.task.type)
                else:
                    log.info("run %s: starting medfed's ClientApp", reply.task.run_id)
                    running.append(start(task_arguments(runtime_api_address, reply.token, site_yaml)))
                continue  # more may be waiting
            time.sleep(POLL_SECONDS)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="start medfed's ClientApp for each task of a site's SuperNode")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--site-config", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API call otherwise
    try:
        launch_tasks(args.runtime_api_address, args.site_config)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
