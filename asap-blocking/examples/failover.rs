//! Agent failover with SQLite task state: a primary agent is killed mid-task, a
//! coordinator notices through the health endpoint, moves the task to a backup
//! agent with `state.query` / `state.restore`, and the task resumes there.
//!
//! Run: `cargo run --example failover`
//!
//! Both agents run as separate processes (this binary re-executed) and share the
//! state database on a common volume (here: a temp directory). The primary is
//! stopped with SIGKILL, so nothing it had not committed survives, and
//! everything it acknowledged does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use asap_blocking::server::{serve, Agent};
use asap_proto::model::{AgentUrn, Manifest, Skill, Timestamp, UnixTime};
use asap_proto::server::{ServerConfig, SkillResult};
use asap_proto::store::{StorageBackend, StorageConfig};
use asap_proto::task::TaskStatus;
use serde_json::{json, Value};

/// The agent process: a "research" skill that does one step per request and
/// reports progress, with its task state in the shared SQLite file.
fn run_agent(name: &str, db: &Path) -> Result<(), String> {
    let id = format!("urn:asap:agent:{name}");
    let mut manifest = Manifest::new(
        AgentUrn::new(id).map_err(|e| e.to_string())?,
        name,
        "1.0.0",
        "failover demo agent",
        "http://127.0.0.1/asap",
    );
    manifest
        .capabilities
        .skills
        .push(Skill::new("research", "Research a topic in steps"));
    manifest.capabilities.state_persistence = true;
    let stores = asap_blocking::store::open_stores(&StorageConfig {
        backend: StorageBackend::Sqlite,
        path: db.to_owned(),
        url: None,
    })
    .map_err(|e| e.to_string())?;
    let agent_name = name.to_owned();
    let agent = Agent::builder(manifest)
        .config(ServerConfig { rate_limit: None, ..ServerConfig::default() })
        .skill("research", move |_ctx, req| {
            let steps = req.input.get("steps").and_then(Value::as_u64).unwrap_or(3);
            // Resume from the restored state when the coordinator passes it along.
            let mut notes: Vec<Value> = req.input.get("resume_from").and_then(|r| r.get("notes")).and_then(Value::as_array).cloned().unwrap_or_default();
            notes.push(json!(format!("step {} done by {agent_name}", notes.len() + 1)));
            let done = notes.len() as u64 >= steps;
            let mut result = serde_json::Map::new();
            result.insert("notes".into(), Value::Array(notes));
            result.insert("progress".into(), json!({"percent": (result["notes"].as_array().map_or(0, Vec::len) as u64 * 100 / steps.max(1))}));
            Ok(SkillResult { status: if done { TaskStatus::Completed } else { TaskStatus::Working }, result: Some(result), final_state: None, metrics: None })
        })
        .stores(stores)
        .build();
    let handle = serve("127.0.0.1:0", agent, 2).map_err(|e| e.to_string())?;
    println!("READY {}", handle.local_addr());
    handle.join();
    Ok(())
}

/// One JSON POST/GET over a fresh connection (the coordinator's whole HTTP client).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
    let status = String::from_utf8_lossy(&out[..end])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        serde_json::from_slice(&out[end + 4..]).unwrap_or(Value::Null),
    ))
}

fn send(
    addr: SocketAddr,
    recipient: &str,
    payload_type: &str,
    payload: Value,
) -> Result<Value, String> {
    let now = Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now())).to_string();
    let rpc = json!({"jsonrpc": "2.0", "method": "asap.send", "id": 1, "params": {"envelope": {
        "asap_version": "0.1", "timestamp": now, "sender": "urn:asap:agent:coordinator",
        "recipient": recipient, "payload_type": payload_type, "payload": payload}}});
    let (_, v) = http(addr, "POST", "/asap", Some(&rpc)).map_err(|e| e.to_string())?;
    match v.get("result") {
        Some(r) => Ok(r["envelope"]["payload"].clone()),
        None => Err(format!("agent refused: {}", v["error"])),
    }
}

fn healthy(addr: SocketAddr) -> bool {
    matches!(http(addr, "GET", "/.well-known/asap/health", None), Ok((200, v)) if v["status"] == "healthy")
}

fn start(name: &str, db: &Path) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["agent", name])
        .arg(db)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("READY ")
        .ok_or_else(|| format!("agent said {line:?}"))?
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok((child, addr))
}

fn coordinator() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("asap-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = dir.join("shared_state.db");
    let (mut primary, primary_addr) = start("primary", &db)?;
    let (mut backup, backup_addr) = start("backup", &db)?;
    println!(
        "primary on {primary_addr}, backup on {backup_addr}, shared state {}",
        db.display()
    );

    // 1. Work starts on the primary; its state is committed before it answers.
    let first = send(
        primary_addr,
        "urn:asap:agent:primary",
        "task.request",
        json!({"conversation_id": "conv_failover", "skill_id": "research", "input": {"topic": "failover", "steps": 3}}),
    )?;
    let task_id = first["task_id"].as_str().ok_or("no task id")?.to_owned();
    println!(
        "task {task_id} on primary: status {}, progress {}",
        first["status"], first["result"]["progress"]
    );

    // 2. The primary dies without warning.
    primary.kill().map_err(|e| e.to_string())?;
    let _ = primary.wait();
    println!("primary killed (SIGKILL)");

    // 3. The coordinator notices through the health endpoint.
    let mut down_checks = 0;
    while healthy(primary_addr) {
        down_checks += 1;
        if down_checks > 50 {
            return Err("primary still answers health checks".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "health check: primary is down; backup healthy: {}",
        healthy(backup_addr)
    );

    // 4. Move the task: query its last snapshot and restore it on the backup.
    let state = send(
        backup_addr,
        "urn:asap:agent:backup",
        "state.query",
        json!({"task_id": task_id}),
    )?;
    let snapshot = &state["result"]["snapshot"];
    println!(
        "last snapshot: {} v{} status {}",
        snapshot["id"], snapshot["version"], state["status"]
    );
    let restored = send(
        backup_addr,
        "urn:asap:agent:backup",
        "state.restore",
        json!({"task_id": task_id, "snapshot_id": snapshot["id"]}),
    )?;
    let restored_snapshot = &restored["result"]["snapshot"];
    println!("restored on backup as v{}", restored_snapshot["version"]);

    // 5. The task resumes on the backup from the restored state and finishes.
    let mut resume_from = restored_snapshot["data"]["result"].clone();
    let mut last = Value::Null;
    for _ in 0..3 {
        last = send(
            backup_addr,
            "urn:asap:agent:backup",
            "task.request",
            json!({"conversation_id": "conv_failover", "parent_task_id": task_id, "skill_id": "research", "input": {"topic": "failover", "steps": 3, "resume_from": resume_from}}),
        )?;
        println!(
            "backup step: status {}, notes {}",
            last["status"], last["result"]["notes"]
        );
        if last["status"] == "completed" {
            break;
        }
        resume_from = last["result"].clone();
    }
    let _ = backup.kill();
    let _ = backup.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if last["status"] != "completed" {
        return Err(format!("task did not complete on the backup: {last}"));
    }
    println!("task resumed and completed on the backup");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("agent") if args.len() == 4 => run_agent(&args[2], Path::new(&args[3])),
        _ => coordinator(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("failover: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
