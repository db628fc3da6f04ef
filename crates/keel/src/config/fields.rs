//! Patroni's configuration keys as data, each with its fate in Keel: implemented (a typed [`Kind`]), refused
//! ([`Kind::Refused`], or [`Kind::Limited`] for values Keel does not implement, with what to do), or accepted with
//! one warning ([`Kind::Ignored`], only where ignoring cannot surprise anyone). `docs/patroni-compatibility.md`
//! lists the same fates; a test keeps the two in step.

use super::schema::{Field, Kind};

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: false }
}
const fn req(name: &'static str, kind: Kind) -> Field {
    Field { name, kind, required: true }
}
const fn refuse(name: &'static str, hint: &'static str) -> Field {
    Field { name, kind: Kind::Refused(hint), required: false }
}
const fn ignore(name: &'static str, why: &'static str) -> Field {
    Field { name, kind: Kind::Ignored(why), required: false }
}

const OTHER_DCS: &str = "Keel speaks etcd v3 only: move the cluster to etcd and configure the etcd3 section";
const ETCD_KEY_PASSWORD: &str = "Keel reads unencrypted PEM keys only: decrypt the key (openssl pkey -in enc.pem -out \
     key.pem), protect the file with its permissions, and remove key_password";
const ETCD_DISCOVERY: &str = "Keel connects to the etcd endpoints listed in host or hosts; use those instead";
const REST_EXTRA: &str = "not implemented by Keel's REST server; remove it";
const PG_SSL: &str = "Keel implements sslmode, sslrootcert, sslcert, sslkey, sslcrl and channel_binding for its \
     PostgreSQL connections; encrypted keys (sslpassword), CRL directories, direct TLS negotiation and GSS \
     encryption are not implemented yet. Remove it only if the implemented settings are enough";
const SCRIPT: &str = "Keel does not run user scripts (callbacks, pre_promote, before_stop, post_bootstrap, custom \
     bootstrap or replica methods); remove it";
const LOG_FILES: &str = "Keel logs to stderr only; capture it with your service manager (journald, docker) and \
     remove the log file settings";
const IN_DYNAMIC: &str = "Patroni reads it from the dynamic configuration only: set it under bootstrap.dcs (new \
     cluster) or with keel edit-config";
const LEGACY_AUTH: &str = "this is the pre-`authentication` spelling: move it under postgresql.authentication";
const STANDBY: &str = "Keel runs primary clusters only: standby clusters are not implemented";
const RECOVERY_CONF: &str = "Keel writes the recovery settings itself; set restore_command and the like in \
     postgresql.parameters";

pub const ROOT: &[Field] = &[
    req("scope", Kind::Str),
    opt("namespace", Kind::Str),
    req("name", Kind::Str),
    req("restapi", Kind::Map(RESTAPI)),
    req("etcd3", Kind::Map(ETCD3)),
    opt("bootstrap", Kind::MapWithNamed(BOOTSTRAP, "method", SCRIPT)),
    req("postgresql", Kind::MapWithNamed(POSTGRESQL, "create_replica_methods", SCRIPT)),
    opt("tags", Kind::OpenMap(TAGS)),
    opt("keel", Kind::Map(KEEL)),
    opt("log", Kind::Map(LOG)),
    opt("ctl", Kind::Map(CTL)),
    opt("watchdog", Kind::Map(WATCHDOG_FIELDS)),
    ignore("thread_pool_size", "Keel has no thread pool"),
    ignore("thread_stack_size", "Keel has no Python threads"),
    refuse("citus", "Keel does not implement Citus clusters"),
    refuse("consul", OTHER_DCS),
    refuse(
        "etcd",
        "Keel speaks etcd v3 only: use the etcd3 section (keys written through the v2 API are not visible in v3)",
    ),
    refuse("exhibitor", OTHER_DCS),
    refuse("zookeeper", OTHER_DCS),
    refuse("kubernetes", OTHER_DCS),
    refuse("raft", OTHER_DCS),
    refuse("standby_cluster", STANDBY),
    // Patroni ignores these at the top level (they belong in bootstrap.dcs); old configurations still have them.
    refuse("ttl", IN_DYNAMIC),
    refuse("loop_wait", IN_DYNAMIC),
    refuse("retry_timeout", IN_DYNAMIC),
    refuse("maximum_lag_on_failover", IN_DYNAMIC),
];

const LOG: &[Field] = &[
    ignore("type", "Keel's log format is fixed"),
    ignore("level", "Keel's log level is set with RUST_LOG"),
    ignore("traceback_level", "Keel prints no Python tracebacks"),
    ignore("format", "Keel's log format is fixed"),
    ignore("dateformat", "Keel's log format is fixed"),
    ignore("static_fields", "Keel's log format is fixed"),
    ignore("max_queue_size", "Keel has no log queue"),
    ignore("loggers", "Keel's log levels are set with RUST_LOG"),
    ignore("deduplicate_heartbeat_logs", "Keel's log format is fixed"),
    refuse("dir", LOG_FILES),
    refuse("mode", LOG_FILES),
    refuse("file_num", LOG_FILES),
    refuse("file_size", LOG_FILES),
];

const CTL: &[Field] = &[
    opt("authentication", Kind::Map(RESTAPI_AUTH)),
    opt("insecure", Kind::Bool),
    opt("cacert", Kind::Str),
    opt("certfile", Kind::Str),
    opt("keyfile", Kind::Str),
    opt("keyfile_password", Kind::Str),
];

/// Checked further by `crate::fence::watchdog::WatchdogMode::parse` (an unknown mode is an error).
const WATCHDOG_FIELDS: &[Field] = &[opt("mode", Kind::Str), opt("device", Kind::Str), opt("safety_margin", Kind::Int)];

const RESTAPI_AUTH: &[Field] = &[opt("username", Kind::Str), opt("password", Kind::Str)];

const RESTAPI: &[Field] = &[
    req("listen", Kind::Address),
    opt("connect_address", Kind::Address),
    opt("authentication", Kind::Map(RESTAPI_AUTH)),
    ignore("thread_pool_size", "Keel's REST server has no thread pool"),
    opt("certfile", Kind::Str),
    opt("keyfile", Kind::Str),
    opt("keyfile_password", Kind::Str),
    opt("cafile", Kind::Str),
    opt("ciphers", Kind::Str),
    opt(
        "verify_client",
        Kind::Limited(
            &Kind::Str,
            // Patroni lower-cases the value.
            &["none", "optional", "required", "None", "Optional", "Required", "NONE", "OPTIONAL", "REQUIRED"],
            "verify_client is none, optional or required",
        ),
    ),
    refuse("https_extra_headers", REST_EXTRA),
    opt("allowlist", Kind::StrList),
    opt("allowlist_include_members", Kind::Bool),
    refuse("http_extra_headers", REST_EXTRA),
    refuse("request_queue_size", REST_EXTRA),
    refuse("server_tokens", REST_EXTRA),
];

const ETCD3: &[Field] = &[
    opt("host", Kind::Str),
    opt("hosts", Kind::StrList),
    opt("protocol", Kind::Str),
    opt(
        "use_proxies",
        Kind::Limited(
            &Kind::Bool,
            &["true"],
            "Keel does not discover etcd members: it always uses the hosts as given (use_proxies: true); list every \
             member in hosts and drop use_proxies: false",
        ),
    ),
    opt("username", Kind::Str),
    opt("password", Kind::Str),
    opt("cacert", Kind::Str),
    opt("cert", Kind::Str),
    opt("key", Kind::Str),
    refuse("key_password", ETCD_KEY_PASSWORD),
    refuse("url", ETCD_DISCOVERY),
    refuse("proxy", ETCD_DISCOVERY),
    refuse("srv", ETCD_DISCOVERY),
    refuse("srv_suffix", ETCD_DISCOVERY),
    refuse("retry_timeout", IN_DYNAMIC),
];

const BOOTSTRAP: &[Field] = &[
    opt("dcs", Kind::Raw(&Kind::Map(DCS))),
    opt("initdb", Kind::Initdb),
    opt(
        "method",
        Kind::Limited(
            &Kind::Str,
            &["initdb"],
            "custom bootstrap methods are not implemented; remove method (Keel runs initdb)",
        ),
    ),
    refuse("post_bootstrap", SCRIPT),
    refuse("post_init", SCRIPT),
    refuse("pg_hba", "Patroni 4 removed bootstrap.pg_hba: use postgresql.pg_hba"),
    refuse("users", "Patroni 4 removed bootstrap.users: create the roles yourself once the cluster runs"),
];

/// The dynamic configuration (`bootstrap.dcs`, and the store's `config` key written by `keel edit-config` or the
/// REST API).
pub const DCS: &[Field] = &[
    // Keel's failover-slot settings (read by keel_core::slots from the dynamic configuration).
    opt(
        "failover_slot_readiness",
        Kind::Limited(&Kind::Str, &["strict", "prefer", "off"], "failover_slot_readiness is strict, prefer or off"),
    ),
    opt("failover_slot_recreate", Kind::Bool),
    opt(
        "failover_slots",
        Kind::Limited(
            &Kind::Str,
            &["auto", "native", "copy"],
            "failover_slots is auto (native on PostgreSQL 17+, copy below), native or copy",
        ),
    ),
    opt("failover_slots_max_lag", Kind::Int),
    opt("ttl", Kind::Seconds),
    opt("loop_wait", Kind::Seconds),
    opt("retry_timeout", Kind::Seconds),
    opt("maximum_lag_on_failover", Kind::Int),
    opt("maximum_lag_on_syncnode", Kind::Int),
    opt("max_timelines_history", Kind::Int),
    opt("primary_start_timeout", Kind::Seconds),
    opt("master_start_timeout", Kind::Seconds),
    opt("primary_stop_timeout", Kind::Seconds),
    opt("master_stop_timeout", Kind::Seconds),
    opt("check_timeline", Kind::Bool),
    opt("pause", Kind::Bool),
    opt(
        "synchronous_mode",
        Kind::Limited(
            &Kind::SyncMode,
            &["true", "false"],
            "quorum commit is not implemented yet (running it as FIRST n could lose acknowledged commits at \
             failover); use synchronous_mode: on, or keep running Patroni",
        ),
    ),
    opt("synchronous_mode_strict", Kind::Bool),
    opt("synchronous_node_count", Kind::Int),
    opt("failsafe_mode", Kind::Bool),
    opt("member_slots_ttl", Kind::Seconds),
    opt("postgresql", Kind::Map(DCS_POSTGRESQL)),
    opt("slots", Kind::MapOf(&Kind::Slot)),
    opt("permanent_slots", Kind::MapOf(&Kind::Slot)),
    opt("permanent_replication_slots", Kind::MapOf(&Kind::Slot)),
    opt("ignore_slots", Kind::ListOf(&Kind::Map(IGNORE_SLOT))),
    refuse("standby_cluster", STANDBY),
];

const DCS_POSTGRESQL: &[Field] = &[
    opt("use_pg_rewind", Kind::Bool),
    opt("use_slots", Kind::Bool),
    opt("parameters", Kind::MapOf(&Kind::Any)),
    opt("pg_hba", Kind::Lines),
    opt("pg_ident", Kind::Lines),
    opt("pg_ctl_timeout", Kind::Seconds),
    opt("remove_data_directory_on_rewind_failure", Kind::Bool),
    opt("remove_data_directory_on_diverged_timelines", Kind::Bool),
    refuse("recovery_conf", RECOVERY_CONF),
];

pub const SLOT: &[Field] = &[
    opt("type", Kind::Str),
    opt("database", Kind::Str),
    opt("plugin", Kind::Str),
    opt("cluster_type", Kind::Str),
    // Patroni removes a configured `lsn`; accepted so such configurations still load.
    opt("lsn", Kind::Any),
];

const IGNORE_SLOT: &[Field] =
    &[opt("name", Kind::Str), opt("type", Kind::Str), opt("database", Kind::Str), opt("plugin", Kind::Str)];

const POSTGRESQL: &[Field] = &[
    req("listen", Kind::Address),
    req("connect_address", Kind::Address),
    req("data_dir", Kind::Str),
    opt("bin_dir", Kind::Str),
    opt("database", Kind::Str),
    opt("pgpass", Kind::Str),
    opt("authentication", Kind::Map(PG_AUTH)),
    opt("parameters", Kind::MapOf(&Kind::Any)),
    opt("pg_hba", Kind::Lines),
    opt("pg_ident", Kind::Lines),
    opt("pg_ctl_timeout", Kind::Seconds),
    opt("use_pg_rewind", Kind::Bool),
    opt("remove_data_directory_on_rewind_failure", Kind::Bool),
    opt("remove_data_directory_on_diverged_timelines", Kind::Bool),
    opt(
        "use_unix_socket",
        Kind::Limited(&Kind::Bool, &["false"], "Keel connects over TCP to postgresql.listen; remove it"),
    ),
    opt(
        "use_unix_socket_repl",
        Kind::Limited(&Kind::Bool, &["false"], "Keel connects over TCP to postgresql.listen; remove it"),
    ),
    opt(
        "create_replica_methods",
        Kind::Limited(&Kind::StrList, &["basebackup"], "only basebackup is implemented; remove the other methods"),
    ),
    refuse("use_slots", IN_DYNAMIC),
    refuse("config_dir", "Keel keeps postgresql.conf in the data directory; remove config_dir"),
    refuse("bin_name", "Keel runs the standard program names from bin_dir; remove bin_name"),
    refuse(
        "basebackup",
        "Keel runs pg_basebackup with its own options (-X stream -c fast); remove the basebackup options",
    ),
    refuse("callbacks", SCRIPT),
    refuse("pre_promote", SCRIPT),
    refuse("before_stop", SCRIPT),
    refuse("recovery_conf", RECOVERY_CONF),
    refuse(
        "custom_conf",
        "Keel writes postgresql.conf over postgresql.base.conf; put the settings in postgresql.parameters",
    ),
    refuse("proxy_address", "Keel does not publish a proxy_url yet; remove it"),
    refuse("retry_timeout", IN_DYNAMIC),
    refuse("superuser", LEGACY_AUTH),
    refuse("replication", LEGACY_AUTH),
    refuse("pg_rewind", LEGACY_AUTH),
];

const PG_USER: &[Field] = &[
    opt("username", Kind::Str),
    opt("password", Kind::Str),
    opt(
        "sslmode",
        Kind::Limited(
            &Kind::Str,
            &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
            "sslmode is disable, allow, prefer, require, verify-ca or verify-full",
        ),
    ),
    opt("sslkey", Kind::Str),
    refuse("sslpassword", PG_SSL),
    opt("sslcert", Kind::Str),
    opt("sslrootcert", Kind::Str),
    opt("sslcrl", Kind::Str),
    refuse("sslcrldir", PG_SSL),
    refuse("sslnegotiation", PG_SSL),
    refuse("gssencmode", PG_SSL),
    opt(
        "channel_binding",
        Kind::Limited(&Kind::Str, &["disable", "prefer", "require"], "channel_binding is disable, prefer or require"),
    ),
];

const PG_AUTH: &[Field] =
    &[opt("superuser", Kind::Map(PG_USER)), opt("replication", Kind::Map(PG_USER)), opt("rewind", Kind::Map(PG_USER))];

pub const TAGS: &[Field] = &[
    opt("nofailover", Kind::Bool),
    opt("failover_priority", Kind::Int),
    opt("noloadbalance", Kind::Bool),
    opt("clonefrom", Kind::Bool),
    opt("replicatefrom", Kind::Str),
    opt("nosync", Kind::Bool),
    opt("sync_priority", Kind::Int),
    opt(
        "nostream",
        Kind::Limited(
            &Kind::Bool,
            &["false"],
            "nostream (archive-only replicas) is not implemented: the node would stream anyway; remove it",
        ),
    ),
];

/// Keel's own settings (none yet).
const KEEL: &[Field] = &[];
