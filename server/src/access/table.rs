//! What each RPC needs: one table for every service the server serves. An RPC that
//! is not in it is refused at run time (deny by default), and a test walks the
//! server's descriptor sets so a new RPC cannot ship unmapped.

use std::collections::HashMap;
use std::sync::LazyLock;

use driftwatch_proto::v1::Role;

/// What a call to one RPC must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health checks (probes).
    Open,
    /// Nothing but TLS: the enrollment token in the request is the credential.
    Enroll,
    /// A valid agent certificate (the stream's host id is the certificate's).
    Agent,
    /// Operator credentials with at least this role.
    Role(Role),
    /// Server reflection: viewer, unless `[access] open_reflection` opens it.
    Reflection,
}

use Need::{Agent, Enroll, Open, Reflection};
const VIEWER: Need = Need::Role(Role::Viewer);
const RESPONDER: Need = Need::Role(Role::Responder);
const OPERATOR: Need = Need::Role(Role::Operator);
const ADMIN: Need = Need::Role(Role::Admin);

/// `(service, [(method, need)])`: every RPC the server serves.
pub const TABLE: &[(&str, &[(&str, Need)])] = &[
    ("driftwatch.v1.AgentGateway", &[("Connect", Agent), ("Enroll", Enroll)]),
    (
        "driftwatch.v1.Fleet",
        &[
            ("ListHosts", VIEWER),
            ("GetHost", VIEWER),
            ("GetFile", VIEWER),
            ("Diff", VIEWER),
            ("GetResourceSummary", VIEWER),
            // Labels choose which baselines and rollouts reach a host.
            ("SetHostLabels", OPERATOR),
            ("RevokeHost", ADMIN),
        ],
    ),
    (
        "driftwatch.v1.Alerts",
        &[
            ("ListAlerts", VIEWER),
            ("GetAlert", VIEWER),
            ("ListSilences", VIEWER),
            ("ListEvents", VIEWER),
            ("Subscribe", VIEWER),
            ("ListNotifiers", VIEWER),
            ("Acknowledge", RESPONDER),
            ("CreateSilence", RESPONDER),
            ("ExpireSilence", RESPONDER),
        ],
    ),
    ("driftwatch.v1.Audit", &[("ListAuditEvents", VIEWER)]),
    (
        "driftwatch.v1.Baselines",
        &[
            ("GetBaseline", VIEWER),
            ("ListBaselines", VIEWER),
            ("PinBaseline", OPERATOR),
            ("SetBaselineKeys", OPERATOR),
            ("DeleteBaseline", OPERATOR),
        ],
    ),
    (
        "driftwatch.v1.Changes",
        &[
            ("GetRollout", VIEWER),
            ("ListRollouts", VIEWER),
            ("WatchRollout", VIEWER),
            ("Correct", OPERATOR),
            ("StartRollout", OPERATOR),
            ("AbortRollout", OPERATOR),
            ("ResumeRollout", OPERATOR),
        ],
    ),
    // Checking rules against the fleet changes nothing.
    ("driftwatch.v1.Rules", &[("ListRules", VIEWER), ("CheckRules", VIEWER), ("ReloadRules", OPERATOR)]),
    (
        "driftwatch.v1.Enrollment",
        &[("CreateEnrollToken", ADMIN), ("ListEnrollTokens", ADMIN), ("RevokeEnrollToken", ADMIN)],
    ),
    (
        "driftwatch.v1.Access",
        &[
            ("WhoAmI", VIEWER),
            ("CreateToken", ADMIN),
            ("ListTokens", ADMIN),
            ("RevokeToken", ADMIN),
            ("CreateOperatorCert", ADMIN),
        ],
    ),
    ("grpc.health.v1.Health", &[("Check", Open), ("Watch", Open)]),
    ("grpc.reflection.v1.ServerReflection", &[("ServerReflectionInfo", Reflection)]),
    ("grpc.reflection.v1alpha.ServerReflection", &[("ServerReflectionInfo", Reflection)]),
];

static BY_PATH: LazyLock<HashMap<String, Need>> = LazyLock::new(|| {
    TABLE
        .iter()
        .flat_map(|(service, methods)| methods.iter().map(move |(m, need)| (format!("/{service}/{m}"), *need)))
        .collect()
});

/// What a call to `path` (`/package.Service/Method`) needs; `None`: not mapped, refused.
pub fn need(path: &str) -> Option<Need> {
    BY_PATH.get(path).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every RPC in every descriptor set the server registers for reflection.
    fn served_rpcs() -> Vec<String> {
        let sets: [&[u8]; 4] = [
            driftwatch_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut out = Vec::new();
        for bytes in sets {
            let set = prost_types::FileDescriptorSet::decode(bytes).expect("descriptor set decodes");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        out.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn every_served_rpc_is_mapped_and_nothing_else_is() {
        let served = served_rpcs();
        assert!(served.len() > 40, "{served:?}");
        let unmapped: Vec<&String> = served.iter().filter(|p| need(p).is_none()).collect();
        assert!(unmapped.is_empty(), "RPCs without an entry in the access table: {unmapped:?}");
        let stale: Vec<&String> = BY_PATH.keys().filter(|p| !served.contains(p)).collect();
        assert!(stale.is_empty(), "access table entries for RPCs nobody serves: {stale:?}");
    }

    #[test]
    fn unknown_paths_are_not_mapped() {
        assert_eq!(need("/driftwatch.v1.Fleet/DropAll"), None);
        assert_eq!(need("/driftwatch.v1.Fleet/"), None);
        assert_eq!(need(""), None);
        assert_eq!(need("/driftwatch.v1.Fleet/GetHost"), Some(VIEWER));
    }
}
