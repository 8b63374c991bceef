"""Shared pytest fixtures. The real data (../shared/data) must be there: without it the run fails."""

import pytest

from pipeline.testing.data import require_shared_data


def pytest_configure(config):
    try:
        require_shared_data()
    except FileNotFoundError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SDXL inpainting pipeline (9-channel UNet), built once per test session."""
    from pipeline.tools.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl-inpaint")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server mode on a free local port) for the whole session; its URL.

    Dummy credentials and the standard `AWS_ENDPOINT_URL` are set for the session, so boto3, s3fs and
    with them every `s3://` URL of the pipeline talk to it. Tests create their own buckets.
    """
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        }.items():
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # instances made earlier know no endpoint
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
