import pytest

from testkit import make_tiny_bert


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()
