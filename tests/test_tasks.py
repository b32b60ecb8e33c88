"""The task seam: one spec per task (emokp_ray/tasks.py), and the HTTP response model agreeing with
what the predictor and the service really answer."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import numpy as np
import pytest
from pydantic import ValidationError

from emokp_ray.inference.label_output import OUTPUT_SCHEMA
from emokp_ray.inference.predictor import Predictor
from emokp_ray.inference.results import Face
from emokp_ray.serving.schemas import BatchResponse, FaceOut, LabelsResponse, PredictResponse
from emokp_ray.tasks import SPECS, TASKS, task_spec
from emokp_ray.training import config as train_config
from tests.helpers import write_tiny_checkpoints

# Fields of a face that no task owns: the detector's box, score and landmarks.
FACE_BASE = ("box", "score", "landmarks")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    kp, em = write_tiny_checkpoints(tmp_path_factory.mktemp("tiny"))
    return Predictor.from_paths(str(kp), str(em), device="cpu", detect=False)


def test_tasks_and_their_names_are_defined_once():
    assert TASKS == ("keypoints", "emotion")
    assert train_config.TASKS is TASKS and train_config.CHOICES["task"] is TASKS
    from emokp_ray.models import resnet

    assert resnet.TASKS is TASKS
    with pytest.raises(Exception, match="unknown task 'pose'"):
        task_spec("pose")


def test_importing_the_specs_and_the_registry_loads_no_torch():
    code = (
        "import sys, emokp_ray.tasks, emokp_ray.models.registry, emokp_ray.training.config, emokp_ray.models; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_response_model_fields_are_the_task_specs_fields():
    task_fields = {name: tp for spec in SPECS.values() for name, tp in spec.response_fields.items()}
    model_fields = dict(FaceOut.model_fields)
    assert set(model_fields) == set(FACE_BASE) | set(task_fields)
    hints = typing.get_type_hints(FaceOut)
    for name, tp in task_fields.items():
        assert hints[name] == tp, name
        assert model_fields[name].default is None  # null where that task's model is absent
    # ... and the predictor's Face carries each of them
    assert set(task_fields) <= {f.name for f in dataclasses.fields(Face)}


def test_label_output_has_every_tasks_columns():
    for spec in SPECS.values():
        assert set(spec.label_columns) <= set(OUTPUT_SCHEMA.names), spec.name


def _faces(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 96, 96), dtype=np.uint8)


def test_predictor_answers_validate_against_the_response_models(predictor):
    info = predictor.model_info()
    crops = _faces()
    results = predictor.predict(list(crops), mode="crop") + predictor.predict(
        [np.zeros((200, 300), np.uint8)], boxes=[[(10.0, 20.0, 96.0, 96.0), (150.0, 40.0, 80.0, 80.0)]]
    )
    for result in results:
        answer = result.to_dict()
        PredictResponse.model_validate({**answer, "model": info})
        assert answer["faces"] and all(set(face) == set(FaceOut.model_fields) for face in answer["faces"])
    BatchResponse.model_validate({"results": [r.to_dict() for r in results], "model": info})
    LabelsResponse.model_validate(predictor.labels())
    # One model absent: its fields are null, and still valid.
    alone = Predictor(predictor.keypoints, None, device="cpu")
    face = alone.predict(list(crops[:1]), mode="crop")[0].to_dict()["faces"][0]
    FaceOut.model_validate(face)
    assert face["emotion"] is None and face["probabilities"] is None and face["keypoints"]


def test_an_answer_the_model_does_not_describe_fails_validation(predictor):
    face = predictor.predict(list(_faces(1)), mode="crop")[0].to_dict()["faces"][0]
    with pytest.raises(ValidationError, match="valence"):
        FaceOut.model_validate({**face, "valence": 0.3})  # a field added to Face but not to the specs
    with pytest.raises(ValidationError):
        FaceOut.model_validate({**face, "keypoints": [1.0, 2.0]})  # a changed shape


def test_spec_metrics_pick_the_best_checkpoint_in_the_right_direction():
    assert task_spec("keypoints").metric == ("val/rmse_px", "min")
    assert task_spec("emotion").metric == ("val/macro_f1", "max")
    cfg = train_config.TrainConfig(task="emotion", data="d", out="o")
    assert cfg.resolved_input_size == 48 and cfg.metric == ("val/macro_f1", "max")


def test_every_layers_task_table_covers_the_tasks():
    """A task's data and training sides live in their layers, looked up by its name: each table has
    exactly the specs' tasks, so a new task cannot be half added."""
    from emokp_ray.data.task_data import DATA
    from emokp_ray.training.facts import TASK_FACTS
    from emokp_ray.training.task_training import TRAINING

    for table in (DATA, TRAINING, TASK_FACTS):
        assert tuple(table) == TASKS
