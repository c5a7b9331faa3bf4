import pytest

from energysplit._registry import Registry
from energysplit.errors import RegistryError


def test_register_get_create_and_duplicates():
    reg = Registry("thing")

    @reg.register()
    def alpha(x=1, y=2):
        return (x, y)

    reg.register("beta", lambda: "b", origin="plugin-x")
    assert reg.names() == ["alpha", "beta"]
    assert reg.names("a*") == ["alpha"]
    assert reg.origin("beta") == "plugin-x"
    assert reg.create("alpha", x=5, y=None) == (5, 2)  # None arguments fall back to defaults
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("alpha", lambda: None)
    with pytest.raises(RegistryError, match="unknown thing 'gamma'; known: alpha, beta"):
        reg.get("gamma")
    assert "alpha" in reg and len(reg) == 2
