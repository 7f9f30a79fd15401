import sqlite3

import pytest
from prefect.states import Failed

from tasks.data import DataInfrastructureError, DataStageError
from tasks.retry import retry_on_infrastructure_errors
from tasks.validate import DataValidationError


@pytest.mark.parametrize("error, retried", [
    (DataInfrastructureError("remote unreachable"), True),
    (ConnectionError("reset"), True),
    (sqlite3.OperationalError("database is locked"), True),
    (DataStageError("builder failed"), False),
    (DataValidationError("data/x", "image_classification", []), False),
    (ValueError("shape mismatch"), False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
])
def test_only_infrastructure_errors_are_retried(error, retried):
    assert retry_on_infrastructure_errors(None, None, Failed(data=error)) is retried
