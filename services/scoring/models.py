"""Value model versions: the proto form, the engine's JSON form, and their checks."""

from __future__ import annotations

import json

from google.protobuf import json_format

import scoring_engine

from cvh.scoring.v1 import scoring_service_pb2 as pb
from services.common.errors import FieldViolation, ServiceError
from services.common.validation import SLUG

# Fields of ValueModel that describe the model (the rest is bookkeeping set by the service).
SPEC_FIELDS = ("model_id", "description", "signals", "dimensions", "tiers", "hysteresis_points", "lifetime_value",
               "outcomes")


def check_sizes(model: pb.ValueModel, prefix: str = "model.") -> None:
    """The engine's caps on repeated fields, checked before the (costly) conversion of what may be huge."""
    from scoring_engine import model as limits

    violations = []

    def cap(items, field_path: str, most: int) -> None:
        if len(items) > most:
            violations.append(FieldViolation(prefix + field_path, f"at most {most}, got {len(items)}"))

    cap(model.signals, "signals", limits.MAX_SIGNALS)
    cap(model.dimensions, "dimensions", limits.MAX_DIMENSIONS)
    cap(model.tiers, "tiers", limits.MAX_TIERS)
    for i, signal in enumerate(model.signals[:limits.MAX_SIGNALS]):
        cap(signal.bands, f"signals[{i}].bands", limits.MAX_BANDS)
    for i, dimension in enumerate(model.dimensions[:limits.MAX_DIMENSIONS]):
        cap(dimension.weights, f"dimensions[{i}].weights", limits.MAX_SIGNALS)
    if violations:
        raise ServiceError.invalid(violations, "model")


def spec_of(model: pb.ValueModel) -> dict:
    """The engine's JSON form of a model message (proto3 JSON, field names as in the proto).

    Only the describing fields are converted: the output-only ones (e.g. a create_time out of the
    Timestamp range, which proto3 JSON cannot express) are ignored, as AIP-203 says, not an error.
    """
    spec = pb.ValueModel()
    for field_name in SPEC_FIELDS:
        field = pb.ValueModel.DESCRIPTOR.fields_by_name[field_name]
        if field.is_repeated:
            getattr(spec, field_name).extend(getattr(model, field_name))
        elif field.message_type is not None:
            if model.HasField(field_name):
                getattr(spec, field_name).CopyFrom(getattr(model, field_name))
        else:
            setattr(spec, field_name, getattr(model, field_name))
    return json_format.MessageToDict(spec, preserving_proto_field_name=True)


def check_spec(spec: dict, prefix: str = "model."):
    """The engine's model for ``spec``; INVALID_ARGUMENT naming every bad field otherwise."""
    if not SLUG.fullmatch(spec.get("model_id", "")):
        raise ServiceError.invalid([FieldViolation(f"{prefix}model_id",
                                                   "required: [a-z][a-z0-9-]{0,62}, e.g. \"default\"")])
    try:
        return scoring_engine.ValueModel.from_dict(spec)
    except scoring_engine.ModelValidationError as error:
        raise ServiceError.invalid([FieldViolation(prefix + _field(v), _description(v))
                                    for v in error.violations]) from None


def _field(violation) -> str:
    return getattr(violation, "field", None) or violation[0]


def _description(violation) -> str:
    return getattr(violation, "description", None) or violation[1]


def to_proto(spec_json: str, version: int, change_note: str, creator: str, create_time_us: int,
             active: bool) -> pb.ValueModel:
    model = json_format.ParseDict(json.loads(spec_json), pb.ValueModel())
    model.name = f"models/{model.model_id}/versions/{version}"
    model.version, model.change_note, model.creator, model.active = version, change_note, creator, active
    model.create_time.FromMicroseconds(create_time_us)
    return model
