"""Which version train_<project> uses. Narrow unit test: asset events are built by hand because
`airflow dags test` cannot attach a triggering event (the scheduler e2e test covers the real one)."""
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from dataset_registry.operators.train_model import TrainModelOperator


def op():
    return TrainModelOperator(task_id="t", project="shop", output_file="o.csv", asset_uri="dvc://registry/shop")


def event(uri, extra, minutes=0):
    return SimpleNamespace(asset=SimpleNamespace(uri=uri), extra=extra,
                           timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minutes))


def test_newest_event_of_this_project_wins():
    events = {"a": [event("dvc://registry/shop", {"project": "shop", "version": "v1"}, 0),
                    event("dvc://registry/shop", {"project": "shop", "version": "v2"}, 5)]}
    assert op()._version_from_events({"triggering_asset_events": events}) == "v2"


def test_no_event_means_no_version():
    assert op()._version_from_events({"triggering_asset_events": {}}) is None


def test_event_from_another_project_is_refused():
    events = {"a": [event("dvc://registry/other", {"project": "other", "version": "v1"})]}
    with pytest.raises(AirflowFailException, match="trains project 'shop'"):
        op()._version_from_events({"triggering_asset_events": events})


def test_event_without_version_is_refused():
    with pytest.raises(AirflowFailException, match="carries no version"):
        op()._version_from_events({"triggering_asset_events": {"a": [event("dvc://registry/shop", {"project": "shop"})]}})
