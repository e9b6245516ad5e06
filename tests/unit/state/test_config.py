"""CharmConfig: defaults, and each invalid value named with its option."""

import pytest

from state.config import CharmConfig, InvalidConfigError, parse_database_sharing


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
        ({"max_client_conn": "10"}, "max_client_conn"),
        ({"query_wait_timeout": True}, "query_wait_timeout"),
        ({"idle_transaction_timeout": 1.5}, "idle_transaction_timeout"),
        # An ini line smuggled into an option is refused before anything is rendered.
        ({"server_idle_timeout": "5\nadmin_users = evil"}, "server_idle_timeout"),
        ({"max_user_client_connections": None}, "max_user_client_connections"),
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


def test_every_option_default_matches_charmcraft_yaml():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[3]
    options = yaml.safe_load((root / "charmcraft.yaml").read_text())["config"]["options"]
    defaults = {name: spec["default"] for name, spec in options.items()}
    cfg = CharmConfig.from_dict(defaults)
    assert cfg == CharmConfig.from_dict({})
    pools = vars(cfg.pools)
    for name, value in defaults.items():
        if name == "database_sharing":  # typed: the parsed mapping
            value = parse_database_sharing(value)
        assert pools.get(name, getattr(cfg, name, None)) == value, name
    assert set(pools) <= set(defaults)
    for spec in options.values():
        assert spec["type"] in ("int", "string")
        assert spec["description"].strip()


def test_pool_options_reach_pool_settings():
    cfg = CharmConfig.from_dict(
        {
            "default_pool_size": 10,
            "min_pool_size": 10,
            "reserve_pool_size": 3,
            "max_client_conn": 7,
        }
    )
    assert (cfg.pools.default_pool_size, cfg.pools.min_pool_size) == (10, 10)
    assert (cfg.pools.reserve_pool_size, cfg.max_client_conn) == (3, 7)


def test_unlimited_max_db_connections_lifts_the_pool_size_cross_checks():
    cfg = CharmConfig.from_dict(
        {"max_db_connections": 0, "default_pool_size": 500, "min_pool_size": 400}
    )
    assert cfg.pools.default_pool_size == 500


def test_database_sharing_parses_entries_into_a_consent_map():
    assert parse_database_sharing("") == {}
    assert parse_database_sharing(" shop=reporting,audit\norders=billing;shop=x ") == {
        "shop": frozenset({"reporting", "audit", "x"}),
        "orders": frozenset({"billing"}),
    }


@pytest.mark.parametrize(
    "value",
    [
        "shop",  # no '='
        "shop=",  # no application
        "=app",  # no database
        "shop=Reporting",  # not a Juju application name
        "shop=a,,b",
        "shop=-a",
        "pgbouncer=app",  # reserved database key
        "x y=app",
        "shop=app\u00a0x",
        "a" * 64 + "=app",
        "shop=" + "a" * 64,
        42,
    ],
)
def test_database_sharing_refuses_what_it_cannot_parse_naming_the_option(value):
    with pytest.raises(InvalidConfigError) as info:
        CharmConfig.from_dict({"database_sharing": value})
    assert info.value.option == "database_sharing"
