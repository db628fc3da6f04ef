//! Network namespaces for fault injection: one namespace per member, each with a veth pair on a bridge in the
//! root namespace, which also gets an address on the bridge so this process reaches every member.
//!
//! Every name starts with a per-run tag, `kc`, this process's pid in hex and a counter (`kc00a1b20-n1`), so two
//! runs never collide and a later run can tell leftovers of a dead run (their pid is gone) from a live one.
//! [`NetLab`] removes everything it made when dropped (also on panic); [`NetLab::create`] first removes the
//! leftovers of dead runs. Needs root and `ip` (iproute2); `tc` only for [`NetLab::has_netem`]'s delay.

use std::io;
use std::process::{Command, Stdio};

/// The prefix of every name a [`NetLab`] creates.
pub const PREFIX: &str = "kc";

/// One member: its namespace, its address on the bridge, its interface inside the namespace.
#[derive(Debug, Clone)]
pub struct NsMember {
    pub name: String,
    pub netns: String,
    pub addr: String,
    /// The veth end in the root namespace, attached to the bridge.
    pub host_veth: String,
}

/// A bridge with members in their own namespaces; see the module documentation.
#[derive(Debug)]
pub struct NetLab {
    pub tag: String,
    pub bridge: String,
    /// The root namespace's address on the bridge.
    pub root_addr: String,
    pub members: Vec<NsMember>,
}

/// The interface name inside each namespace.
pub const INNER_IF: &str = "eth0";

/// Runs `ip args...`; its stdout, or an error naming the command and its stderr.
pub fn ip(args: &[&str]) -> io::Result<String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out =
        Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot run {program} (install iproute2; run as root): {e}"))
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(io::Error::other(format!("{program} {}: {}", args.join(" "), err.trim())))
    }
}

fn tag_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let hex = rest.get(..6)?;
    u32::from_str_radix(hex, 16).ok()
}

fn owner_dead(name: &str) -> bool {
    tag_pid(name)
        .is_some_and(|pid| pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Kills (SIGKILL) every process inside namespace `ns`.
pub fn kill_all_in(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) takes integers only.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes namespaces and links left by runs whose process is gone.
pub fn cleanup_leftovers() -> io::Result<()> {
    for line in ip(&["netns", "list"])?.lines() {
        let ns = line.split_whitespace().next().unwrap_or_default();
        if owner_dead(ns) {
            eprintln!("netns: removing leftover namespace {ns}");
            kill_all_in(ns);
            let _ = ip(&["netns", "del", ns]);
        }
    }
    for line in ip(&["-o", "link", "show"])?.lines() {
        let name = line.split(':').nth(1).map(str::trim).unwrap_or_default();
        let name = name.split('@').next().unwrap_or_default();
        if owner_dead(name) {
            eprintln!("netns: removing leftover link {name}");
            let _ = ip(&["link", "del", name]);
        }
    }
    Ok(())
}

/// A /24 in 10.213.0.0/16 that no route of the root namespace uses yet.
fn free_subnet() -> io::Result<u8> {
    let routes = ip(&["-4", "route", "show"])?;
    let start = (std::process::id() % 200) as u8;
    (0..250u8)
        .map(|i| (start as u16 + i as u16) % 250 + 1)
        .map(|x| x as u8)
        .find(|x| !routes.contains(&format!("10.213.{x}.")))
        .ok_or_else(|| io::Error::other("no free /24 in 10.213.0.0/16 for the namespaces"))
}

impl NetLab {
    /// Creates the bridge and one namespace per name in `names` (short names: `n1`, `etcd`).
    pub fn create(names: &[&str]) -> io::Result<NetLab> {
        cleanup_leftovers()?;
        // A counter after the pid keeps two labs of one process (parallel tests) apart.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 16;
        let tag = format!("{PREFIX}{:06x}{n:x}", std::process::id());
        let x = free_subnet()?;
        let bridge = format!("{tag}-br");
        let root_addr = format!("10.213.{x}.1");
        let mut lab =
            NetLab { tag: tag.clone(), bridge: bridge.clone(), root_addr: root_addr.clone(), members: vec![] };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{root_addr}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let member = NsMember {
                name: name.to_string(),
                netns: format!("{tag}-{name}"),
                addr: format!("10.213.{x}.{}", 10 + i),
                host_veth: format!("{tag}-{i}h"),
            };
            lab.members.push(member.clone());
            lab.add_member(&member)?;
        }
        Ok(lab)
    }

    fn add_member(&self, m: &NsMember) -> io::Result<()> {
        let peer = format!("{}-{}p", self.tag, self.members.len() - 1);
        ip(&["netns", "add", &m.netns])?;
        ip(&["link", "add", &m.host_veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &m.netns])?;
        ip(&["link", "set", &m.host_veth, "master", &self.bridge])?;
        ip(&["link", "set", &m.host_veth, "up"])?;
        ip(&["-n", &m.netns, "link", "set", &peer, "name", INNER_IF])?;
        ip(&["-n", &m.netns, "addr", "add", &format!("{}/24", m.addr), "dev", INNER_IF])?;
        ip(&["-n", &m.netns, "link", "set", INNER_IF, "up"])?;
        ip(&["-n", &m.netns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The member called `name`; panics on an unknown name (a bug in the caller).
    pub fn member(&self, name: &str) -> &NsMember {
        self.members.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no namespace member {name:?}"))
    }

    /// Takes `name`'s interface down (isolated from everyone) or up again.
    pub fn set_link(&self, name: &str, up: bool) -> io::Result<()> {
        let ns = &self.member(name).netns;
        ip(&["-n", ns, "link", "set", INNER_IF, if up { "up" } else { "down" }])?;
        if up {
            // Taking the link down drops its connected route; bringing it up restores it with the address.
            let _ = ip(&["-n", ns, "route", "replace", &format!("{}/24", self.subnet()), "dev", INNER_IF]);
        }
        Ok(())
    }

    fn subnet(&self) -> String {
        let base = self.root_addr.rsplit_once('.').map(|(b, _)| b).unwrap_or("10.213.0");
        format!("{base}.0")
    }

    /// Drops (or, `blocked == false`, restores) traffic from `name` to `addr` with a blackhole route inside
    /// `name`'s namespace: works without iptables or nftables.
    pub fn set_blackhole(&self, name: &str, addr: &str, blocked: bool) -> io::Result<()> {
        let ns = &self.member(name).netns;
        let route = format!("{addr}/32");
        ip(&["-n", ns, "route", if blocked { "add" } else { "del" }, "blackhole", &route]).map(|_| ())
    }

    /// Whether the kernel has netem (a `tc qdisc ... netem` on a namespace's loopback succeeds).
    pub fn has_netem(&self) -> bool {
        let Some(m) = self.members.first() else { return false };
        let ok =
            run("ip", &["netns", "exec", &m.netns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
                .is_ok();
        if ok {
            let _ = run("ip", &["netns", "exec", &m.netns, "tc", "qdisc", "del", "dev", "lo", "root"]);
        }
        ok
    }

    /// Adds (or removes) a netem delay on `name`'s interface.
    pub fn set_delay(&self, name: &str, delay_ms: Option<u32>) -> io::Result<()> {
        let ns = self.member(name).netns.clone();
        let mut args = vec!["netns", "exec", &ns, "tc", "qdisc"];
        let delay = delay_ms.map(|d| format!("{d}ms")).unwrap_or_default();
        match delay_ms {
            Some(_) => args.extend(["add", "dev", INNER_IF, "root", "netem", "delay", &delay]),
            None => args.extend(["del", "dev", INNER_IF, "root"]),
        }
        run("ip", &args).map(|_| ())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for m in &self.members {
            kill_all_in(&m.netns);
            if let Err(e) = ip(&["netns", "del", &m.netns]) {
                eprintln!("netns: {e}");
            }
            let _ = ip(&["link", "del", &m.host_veth]);
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("netns: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_their_run() {
        assert_eq!(tag_pid("kc00002a-n1"), Some(42));
        assert_eq!(tag_pid("eth0"), None);
        assert_eq!(tag_pid("kcxyz"), None);
        assert!(!owner_dead(&format!("{PREFIX}{:06x}-br", std::process::id())));
    }

    /// Creates a lab, applies and removes each fault, and checks that dropping it leaves nothing behind.
    #[test]
    fn a_lab_is_built_faulted_and_removed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        let lab = NetLab::create(&["a", "b"]).unwrap();
        let (a, b) = (lab.member("a").clone(), lab.member("b").clone());
        assert!(ip(&["netns", "list"]).unwrap().contains(&a.netns));
        assert!(ip(&["-n", &a.netns, "-4", "addr", "show", INNER_IF]).unwrap().contains(&a.addr));
        lab.set_blackhole("a", &b.addr, true).unwrap();
        assert!(ip(&["-n", &a.netns, "route", "show"]).unwrap().contains("blackhole"));
        lab.set_blackhole("a", &b.addr, false).unwrap();
        lab.set_link("b", false).unwrap();
        assert!(ip(&["-n", &b.netns, "link", "show", INNER_IF]).unwrap().contains("state DOWN"));
        lab.set_link("b", true).unwrap();
        let bridge = lab.bridge.clone();
        drop(lab);
        let left = ip(&["netns", "list"]).unwrap();
        assert!(!left.contains(&a.netns) && !left.contains(&b.netns), "{left}");
        assert!(ip(&["link", "show", &bridge]).is_err(), "the bridge {bridge} is still there");
    }
}
