"""cvh demo: the whole flow on a synthetic customer base."""

from __future__ import annotations

import argparse


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    pass
