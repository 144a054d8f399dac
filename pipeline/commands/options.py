"""Options that several commands share, declared once so they read the same everywhere."""

from __future__ import annotations

import argparse

from pipeline.nightly.handover import TRANSPORTS


def cluster_options(p: argparse.ArgumentParser, what: str, note: str = "") -> None:
    p.add_argument("--cluster", metavar="ADDRESS",
                   help=f"{what} on the Ray cluster whose head is ADDRESS (HOST:PORT; run this on a node of it): "
                        "builds go to free CPUs, validations to nodes offering the engine's GPU (see `trt-pipeline "
                        f"worker`){note}")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="with --cluster: retry a build or validation whose node died up to N times (default 2)")
    p.add_argument("--unschedulable-after", type=float, default=60.0, metavar="S",
                   help="with --cluster: give up on a build or validation no node can run after waiting S seconds "
                        "for one to join (default 60)")
    p.add_argument("--transport", choices=TRANSPORTS,
                   help="with --cluster: how models and built files travel. auto (default): by path to and from a "
                        "node that proves it sees this machine's files (the same machine, or a shared filesystem: it "
                        "reads a random token in the store's staging), through Ray's object store otherwise; "
                        f"object-store: always through the object store (also ${TRANSPORT_ENV})")


TRANSPORT_ENV = "TRT_PIPELINE_TRANSPORT"
