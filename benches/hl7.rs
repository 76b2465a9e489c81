//! HL7 benchmark (issue 16, point 7): ORU^R01 messages per second through the MLLP listener
//! into committed readings (the real daemon: decode, bind, ingest group commit into the
//! encrypted outbox with synchronous=FULL, alert engine, then the ACK), beside a raw TCP echo
//! baseline measured in the same run with the same clients and frames (network, framing and
//! the clients' own cost: the floor any MLLP listener sits on).
//!
//! Then a ward: 30 monitors at one message per second for a window, and the process's CPU
//! time over it (`/proc/self/stat`) as a percentage of one core. The monitors run in this
//! process too, so the figure includes their cost: it overstates the gateway's.
//!
//! Run: `cargo bench --bench hl7 -- [messages] [ward_seconds]` (defaults 4000, 30).
//! Prints figures; asserts nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use vitalgate::config::Config;
use vitalgate::store::MasterKey;
use vitalgate::transport::hl7_simulator::MonitorSim;
use vitalgate::transport::mllp::{encode, Deframer, Event};

const MONITORS: usize = 8;
const WARD: usize = 30;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<f64>().ok())
        .sum::<f64>()
        / 100.0
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(dir: &Path, listen: SocketAddr) -> Config {
    let mut beds = String::new();
    let mut patients = String::new();
    for i in 0..WARD.max(MONITORS) {
        patients.push_str(&format!("[[patient]]\nid = \"p{i}\"\n"));
        beds.push_str(&format!(
            "[[hl7.bed]]\nlocation = \"Ward^{i}^1\"\npatient = \"p{i}\"\n"
        ));
    }
    let text = format!(
        "[gateway]\nid = \"gw-bench\"\nsetting = \"clinical\"\nstate_dir = \"{d}\"\ndevices_dirs = []\n\
         [store]\nkey_file = \"{d}/unused.key\"\n{patients}\n[hl7]\nlisten = \"{listen}\"\nmax_connections = 256\n{beds}",
        d = dir.display()
    );
    Config::parse(&text, Path::new("bench.toml")).expect("bench config")
}

/// Messages one monitor sends: its simulated stream, each at a new time (distinct ids).
fn messages(i: usize, n: usize) -> Vec<Vec<u8>> {
    let mut sim = MonitorSim::new(
        &format!("Ward^{i}^1"),
        &format!("00A03700980066{i:02X}"),
        vitalgate::drivers::sim::Scenario::Stable,
        i as u64,
    );
    let t0 = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    (0..n)
        .map(|k| {
            encode(
                sim.next_message(t0 + time::Duration::seconds(k as i64))
                    .1
                    .as_bytes(),
            )
        })
        .collect()
}

/// Sends each frame and waits for one frame back; returns the replies' MSA-1 codes.
async fn monitor(addr: SocketAddr, frames: Vec<Vec<u8>>, pace: Option<Duration>) -> Vec<String> {
    let mut s = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    s.set_nodelay(true).unwrap();
    let mut d = Deframer::new(1 << 20);
    let mut buf = vec![0u8; 16384];
    let mut codes = Vec::with_capacity(frames.len());
    let mut ev = Vec::new();
    let mut tick = pace.map(tokio::time::interval);
    for f in frames {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        s.write_all(&f).await.unwrap();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed");
            d.feed(&buf[..n], &mut ev);
            if let Some(Event::Frame(reply)) = ev.iter().find(|e| matches!(e, Event::Frame(_))) {
                let text = String::from_utf8_lossy(reply);
                let code = text
                    .split('\r')
                    .find_map(|l| l.strip_prefix("MSA|"))
                    .map(|l| l.split('|').next().unwrap_or("").to_string())
                    .unwrap_or_else(|| "echo".into());
                codes.push(code);
                ev.clear();
                break;
            }
        }
    }
    codes
}

/// Raw TCP echo: every byte read is written back.
async fn echo_server(listener: TcpListener, token: CancellationToken) {
    loop {
        let (mut s, _) = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => r.unwrap(),
        };
        s.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16384];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn run_clients(
    addr: SocketAddr,
    per: Vec<Vec<Vec<u8>>>,
    pace: Option<Duration>,
) -> (f64, Vec<String>) {
    let started = Instant::now();
    let tasks: Vec<_> = per
        .into_iter()
        .map(|frames| tokio::spawn(monitor(addr, frames, pace)))
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    (started.elapsed().as_secs_f64(), codes)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(4000);
    let ward_s = args.get(1).copied().unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let cfg = config(dir.path(), listen);
    let token = CancellationToken::new();
    let master = MasterKey::ephemeral().expect("key");
    let daemon = rt.spawn(vitalgate::daemon::run(
        cfg,
        master,
        token.clone(),
        Default::default(),
    ));

    let per = n / MONITORS;
    let load: Vec<Vec<Vec<u8>>> = (0..MONITORS).map(|i| messages(i, per)).collect();
    let readings_per_msg = {
        let text = String::from_utf8_lossy(&load[0][0][1..load[0][0].len() - 2]).into_owned();
        vitalgate::hl7::decode(&text, vitalgate::hl7::MonitorZone::EuropeLondon)
            .unwrap()
            .readings()
            .count()
    };

    // Baseline: raw TCP echo, same clients, same frames.
    let echo_token = CancellationToken::new();
    let echo_addr = free_addr();
    let echo = rt.block_on(TcpListener::bind(echo_addr)).unwrap();
    rt.spawn(echo_server(echo, echo_token.clone()));
    let (base_s, _) = rt.block_on(run_clients(echo_addr, load.clone(), None));
    echo_token.cancel();

    // vitalgate: MLLP -> decode -> bind -> committed -> ACK.
    let (ours_s, codes) = rt.block_on(run_clients(listen, load, None));
    let ok = codes.iter().filter(|c| *c == "CA").count();
    let total = per * MONITORS;
    println!("hl7: {total} ORU^R01 messages ({readings_per_msg} readings in the first), {MONITORS} monitors at once, each waiting for its ACK");
    println!(
        "  raw TCP echo baseline : {:>9.0} messages/s",
        total as f64 / base_s
    );
    println!(
        "  vitalgate (committed) : {:>9.0} messages/s  ({ok}/{total} CA; {:.1}x the baseline's time per message)",
        total as f64 / ours_s,
        ours_s / base_s
    );

    // A ward: 30 monitors, one message per second each.
    let ward: Vec<Vec<Vec<u8>>> = (0..WARD).map(|i| messages(i, ward_s)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = cpu_seconds();
    let (wall, codes) = rt.block_on(run_clients(listen, ward, Some(Duration::from_secs(1))));
    let cpu = cpu_seconds() - cpu0;
    let ok = codes.iter().filter(|c| *c == "CA").count();
    println!(
        "  ward: {WARD} monitors x 1 message/s for {wall:.1} s ({ok} CA): CPU {:.2} % of one core (gateway and the 30 simulated monitors together; /proc/self/stat)",
        100.0 * cpu / wall
    );

    token.cancel();
    let _ = rt.block_on(daemon);
}
