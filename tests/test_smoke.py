from support.services import free_port


def test_free_port() -> None:
    assert free_port() > 0
