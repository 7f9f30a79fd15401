"""docker/s3/create_buckets.py, the compose stack's bucket job, against an in-memory stand-in for boto3's S3 client
(the job runs in the image; boto3 need not be installed here)."""
from __future__ import annotations

import pytest

from script_module import load_script


def load_job():
    return load_script("docker/s3/create_buckets.py")


class ClientError(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class BucketAlreadyOwnedByYou(ClientError):
    def __init__(self):
        super().__init__("BucketAlreadyOwnedByYou")


class FakeS3:
    """The calls the job makes, with boto3's error shapes: head_bucket answers 404 for a missing bucket."""

    class exceptions:  # noqa: N801 - boto3 clients expose their error classes under this name
        ClientError = ClientError
        BucketAlreadyOwnedByYou = BucketAlreadyOwnedByYou

    def __init__(self, buckets=(), head_error: str | None = None, created_meanwhile: bool = False):
        self.buckets = set(buckets)
        self.head_error = head_error
        self.created_meanwhile = created_meanwhile
        self.create_calls: list[dict] = []

    def head_bucket(self, Bucket):  # noqa: N803 - boto3's keyword
        if self.head_error:
            raise ClientError(self.head_error)
        if Bucket not in self.buckets:
            raise ClientError("404")

    def create_bucket(self, Bucket, **options):  # noqa: N803 - boto3's keyword
        self.create_calls.append({"Bucket": Bucket, **options})
        if self.created_meanwhile:
            raise BucketAlreadyOwnedByYou()
        self.buckets.add(Bucket)


def test_creates_a_missing_bucket_once():
    job, s3 = load_job(), FakeS3()
    assert job.ensure_bucket(s3, "paperops-mlflow", "us-east-1") is True
    assert job.ensure_bucket(s3, "paperops-mlflow", "us-east-1") is False
    assert s3.create_calls == [{"Bucket": "paperops-mlflow"}]


def test_outside_us_east_1_the_bucket_names_its_region():
    job, s3 = load_job(), FakeS3()
    job.ensure_bucket(s3, "paperops-mlflow", "eu-west-1")
    assert s3.create_calls == [{"Bucket": "paperops-mlflow",
                                "CreateBucketConfiguration": {"LocationConstraint": "eu-west-1"}}]


def test_a_bucket_created_by_a_concurrent_run_counts_as_existing():
    job = load_job()
    assert job.ensure_bucket(FakeS3(created_meanwhile=True), "paperops-mlflow", "us-east-1") is False


def test_other_errors_are_not_taken_for_a_missing_bucket():
    job = load_job()
    with pytest.raises(ClientError, match="403"):
        job.ensure_bucket(FakeS3(head_error="403"), "paperops-mlflow", "us-east-1")


def test_no_bucket_named_is_a_usage_error():
    assert load_job().main([]) == 2
