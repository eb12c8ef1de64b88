"""Customers in: cvh import, cvh signals record."""

from __future__ import annotations

import argparse


def add_parsers(commands, client: argparse.ArgumentParser) -> None:
    pass
