//! Who may hold a socket: at most `max_connections` sockets per instance and
//! `max_connections_per_ip` per remote address, counted from the TCP accept (handshakes
//! included) to the socket's close.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The counts, shared by the accept loop and the connections.
#[derive(Debug)]
pub(super) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only addresses that hold a socket: an entry goes when its count does.
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a socket was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Full {
    /// The instance holds `max_connections` sockets.
    Instance,
    /// This address holds `max_connections_per_ip` sockets.
    Address,
}

impl Full {
    /// The body of the `503` answer.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Full::Instance => "Too many connections",
            Full::Address => "Too many connections from this address",
        }
    }
}

/// A socket's place in the counts, given back when dropped.
#[derive(Debug)]
pub(super) struct Permit {
    admission: Arc<Admission>,
    /// The address counted, when it is known.
    ip: Option<IpAddr>,
}

impl Admission {
    pub(super) fn new(max_total: usize, max_per_ip: usize) -> Self {
        Admission {
            max_total,
            max_per_ip,
            counts: Mutex::default(),
        }
    }

    /// Counts a socket from `ip`, unless the instance or the address is full.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Full> {
        self.admit_from(Some(ip))
    }

    /// Counts a socket from `ip`, or from an address not known (a stream handed over by a host
    /// that does not say): that one counts against the instance only.
    pub(super) fn admit_from(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Permit, Full> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            crate::metrics::upgrade_rejected(crate::metrics::reason::FULL);
            return Err(Full::Instance);
        }
        if let Some(ip) = ip {
            let here = counts.per_ip.entry(ip).or_insert(0);
            if *here >= self.max_per_ip {
                crate::metrics::upgrade_rejected(crate::metrics::reason::FULL_PER_IP);
                return Err(Full::Address);
            }
            *here += 1;
        }
        counts.total += 1;
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }

    /// Sockets counted now.
    pub(super) fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(ip) = self.ip
            && let Some(here) = counts.per_ip.get_mut(&ip)
        {
            *here -= 1;
            if *here == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }
}

/// The default of `max_connections`: nine tenths of the process's open-files limit (the rest is
/// left for everything else a server opens), or 10,000 where the limit cannot be read.
pub(super) fn default_max_connections() -> usize {
    open_files_limit().map_or(10_000, |limit| limit - limit / 10)
}

/// The soft open-files limit, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sockets_per_instance_and_address() {
        let admission = Arc::new(Admission::new(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Full::Address);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Full::Instance);
        drop(first);
        assert_eq!(admission.total(), 2);
        let _again = admission.admit(a).unwrap();
        assert_eq!(admission.counts.lock().unwrap().per_ip.len(), 2);
        assert!(default_max_connections() > 0);
    }
}
