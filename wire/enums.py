"""Protobuf enum values by the short names files and command lines use: StakeholderRole "buyer",
LifecycleStage "at_risk" (the enum name without its prefix, in lower case)."""

from __future__ import annotations

from cvh.common.v1 import common_pb2


def short_names(enum, prefix: str) -> dict[int, str]:
    """Each value of ``enum`` but UNSPECIFIED (0) by its name without ``prefix``, in lower case."""
    return {value: name.removeprefix(prefix).lower() for name, value in enum.items() if value}


ROLE_NAMES = short_names(common_pb2.StakeholderRole, "STAKEHOLDER_ROLE_")
STAGE_NAMES = short_names(common_pb2.LifecycleStage, "LIFECYCLE_STAGE_")
