"""CharmConfig: defaults, and each invalid value named with its option."""

import pytest

from state.config import CharmConfig, InvalidConfigError


def test_defaults_match_charmcraft_yaml():
    assert CharmConfig.from_dict({}) == CharmConfig(6432, "session", 100, 100)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"listen_port": 80}, "listen_port"),
        ({"listen_port": 70000}, "listen_port"),
        ({"listen_port": "6432"}, "listen_port"),
        ({"pool_mode": "sessions"}, "pool_mode"),
        ({"max_db_connections": -1}, "max_db_connections"),
        ({"max_db_connections": True}, "max_db_connections"),
        ({"max_prepared_statements": 1001}, "max_prepared_statements"),
        ({"max_prepared_statements": -5}, "max_prepared_statements"),
    ],
)
def test_invalid_values_name_their_option(options, option):
    with pytest.raises(InvalidConfigError) as err:
        CharmConfig.from_dict(options)
    assert err.value.option == option
    assert option in str(err.value)


def test_valid_values_pass_through():
    cfg = CharmConfig.from_dict(
        {
            "listen_port": 7000,
            "pool_mode": "transaction",
            "max_db_connections": 0,
            "max_prepared_statements": 0,
        }
    )
    assert (cfg.listen_port, cfg.pool_mode, cfg.max_db_connections) == (7000, "transaction", 0)
