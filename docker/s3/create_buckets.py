"""One-shot job of docker-compose.yml: create the S3 buckets the stack writes to, unless they already exist.

It runs from the paperops image with the endpoint and keys the MLflow server uses, so a bucket it can create is
a bucket the server can write to. Running it again changes nothing.

usage: python docker/s3/create_buckets.py BUCKET [BUCKET ...]
environment: MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
"""
from __future__ import annotations

import os
import sys

# The one region where S3 refuses an explicit LocationConstraint.
DEFAULT_S3_REGION = "us-east-1"
MISSING_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}


def ensure_bucket(client, bucket: str, region: str) -> bool:
    """Creates `bucket` unless it exists; True when this call created it. `client` is a boto3 S3 client: its
    own `exceptions` attribute carries the error classes, so this needs no botocore import."""
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in MISSING_BUCKET_CODES:
            raise
    location = {} if region in ("", DEFAULT_S3_REGION) else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        client.create_bucket(Bucket=bucket, **location)
    except client.exceptions.BucketAlreadyOwnedByYou:
        return False  # another run of this job created it in between
    return True


def main(buckets: list[str]) -> int:
    if not buckets:
        print(__doc__, file=sys.stderr)
        return 2
    import boto3

    # An empty endpoint means AWS itself: boto3 then derives the endpoint from the region.
    client = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
    region = os.environ.get("AWS_DEFAULT_REGION", DEFAULT_S3_REGION)
    for bucket in buckets:
        created = ensure_bucket(client, bucket, region)
        print(f"bucket {bucket}: {'created' if created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
