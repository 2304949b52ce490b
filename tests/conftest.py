"""Session fixtures for the real TEI router (tests/teirouter.py): built once per machine by
images/tei/build.sh (the first session on a machine runs cargo, about 15 minutes on two cores;
later ones find it in the cache), started once per session on real models, on loopback."""

from __future__ import annotations

import pytest

from testkit import teirouter


def pytest_collection_modifyitems(config, items):
    """Every test that runs the real router (through any fixture) is marked `tei`, so that
    `-m 'not tei'` leaves out the first build on a machine."""
    for item in items:
        if "tei_binary" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.tei)


@pytest.fixture(scope="session")
def tei_binary(pytestconfig):
    """The router's path; a cold build shows cargo's progress on the terminal."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return teirouter.build_router()


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2 where the PyPI package installed it (TEI only reads it)."""
    return teirouter.minilm_package_dir()


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory):
    return teirouter.cross_encoder_model(tmp_path_factory.getbasetemp() / "tei-cross-encoder")


@pytest.fixture(scope="session")
def tei_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("tei-logs")


@pytest.fixture(scope="session")
def real_tei_embed(tei_binary, minilm_dir, tei_logs):
    """The real router serving all-MiniLM-L6-v2 (candle, float32), session-wide."""
    router = teirouter.start_router(tei_binary, minilm_dir, log=tei_logs / "embed.log",
                                     args=["--served-model-name", "all-MiniLM-L6-v2"])
    yield router
    router.stop()


@pytest.fixture(scope="session")
def real_tei_rerank(tei_binary, cross_encoder_dir, tei_logs):
    """The real router serving the random-weight cross-encoder as a reranker, session-wide."""
    router = teirouter.start_router(tei_binary, cross_encoder_dir, log=tei_logs / "rerank.log")
    yield router
    router.stop()


@pytest.fixture
def start_tei(tei_binary, tmp_path):
    """Routers a test starts with its own arguments, stopped at its end."""
    started: list[teirouter.RouterProcess] = []

    def start(model, **kwargs) -> teirouter.RouterProcess:
        kwargs.setdefault("log", tmp_path / f"tei-{len(started)}.log")
        router = teirouter.start_router(tei_binary, model, **kwargs)
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()
