//! Resources a node offers and a task needs: cpu in millicores, memory in bytes, gpus and named
//! custom resources. Arithmetic is checked: it never over-commits and never underflows.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of resources. Used both for a node's totals / free amounts and a task's request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Whole GPUs.
    pub gpus: u32,
    /// Named custom resources (e.g. `licenses`), counted in whole units.
    pub custom: BTreeMap<String, u64>,
}

/// An arithmetic operation that would overflow or go below zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("not enough {resource}: {available} available, {requested} requested")]
    Insufficient {
        resource: String,
        available: u64,
        requested: u64,
    },
    #[error("{resource} would overflow")]
    Overflow { resource: String },
}

impl Resources {
    /// Cpu and memory only.
    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Self {
            cpu_millis,
            memory_bytes,
            ..Self::default()
        }
    }

    /// True when every amount is zero.
    pub fn is_zero(&self) -> bool {
        self.cpu_millis == 0
            && self.memory_bytes == 0
            && self.gpus == 0
            && self.custom.values().all(|v| *v == 0)
    }

    /// True when `request` fits in `self` (every amount of `request` ≤ the same amount here).
    pub fn fits(&self, request: &Resources) -> bool {
        self.first_shortfall(request).is_none()
    }

    /// The first resource of `request` that `self` cannot cover, if any.
    pub fn first_shortfall(&self, request: &Resources) -> Option<ResourceError> {
        let short = |resource: &str, available: u64, requested: u64| {
            (requested > available).then(|| ResourceError::Insufficient {
                resource: resource.to_owned(),
                available,
                requested,
            })
        };
        short("cpu millicores", self.cpu_millis, request.cpu_millis)
            .or_else(|| short("memory bytes", self.memory_bytes, request.memory_bytes))
            .or_else(|| short("gpus", u64::from(self.gpus), u64::from(request.gpus)))
            .or_else(|| {
                request.custom.iter().find_map(|(name, &want)| {
                    short(name, self.custom.get(name).copied().unwrap_or(0), want)
                })
            })
    }

    /// `self - request`, or an error naming the resource that is short.
    pub fn checked_sub(&self, request: &Resources) -> Result<Resources, ResourceError> {
        if let Some(err) = self.first_shortfall(request) {
            return Err(err);
        }
        let mut custom = self.custom.clone();
        for (name, want) in &request.custom {
            if let Some(have) = custom.get_mut(name) {
                *have -= want;
            }
        }
        Ok(Resources {
            cpu_millis: self.cpu_millis - request.cpu_millis,
            memory_bytes: self.memory_bytes - request.memory_bytes,
            gpus: self.gpus - request.gpus,
            custom,
        })
    }

    /// `self + other`, or an error naming the resource that would overflow.
    pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourceError> {
        let overflow = |resource: &str| ResourceError::Overflow {
            resource: resource.to_owned(),
        };
        let mut custom = self.custom.clone();
        for (name, add) in &other.custom {
            let slot = custom.entry(name.clone()).or_insert(0);
            *slot = slot.checked_add(*add).ok_or_else(|| overflow(name))?;
        }
        Ok(Resources {
            cpu_millis: self
                .cpu_millis
                .checked_add(other.cpu_millis)
                .ok_or_else(|| overflow("cpu millicores"))?,
            memory_bytes: self
                .memory_bytes
                .checked_add(other.memory_bytes)
                .ok_or_else(|| overflow("memory bytes"))?,
            gpus: self
                .gpus
                .checked_add(other.gpus)
                .ok_or_else(|| overflow("gpus"))?,
            custom,
        })
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={}m mem={}",
            self.cpu_millis,
            format_size(self.memory_bytes)
        )?;
        if self.gpus > 0 {
            write!(f, " gpus={}", self.gpus)?;
        }
        for (name, amount) in &self.custom {
            write!(f, " {name}={amount}")?;
        }
        Ok(())
    }
}

/// A size that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size: use a number with an optional K, M, G or T suffix (powers of 1024), e.g. 512M or 2G")]
pub struct ParseSizeError(String);

/// Parses `512M`, `2G`, `1.5G`, `1024` (bytes), `64Ki`/`64KiB` into bytes (powers of 1024).
pub fn parse_size(input: &str) -> Result<u64, ParseSizeError> {
    let err = || ParseSizeError(input.to_owned());
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i');
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(err()),
    };
    let value: f64 = number.parse().map_err(|_| err())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// Formats bytes with the largest binary unit that keeps a whole number or one decimal.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if bytes % size == 0 {
                format!("{}{unit}", bytes / size)
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res(cpu: u64, mem: u64, lic: u64) -> Resources {
        let mut r = Resources::new(cpu, mem);
        if lic > 0 {
            r.custom.insert("lic".into(), lic);
        }
        r
    }

    #[test]
    fn sizes_parse_and_reject_nonsense() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(format_size(512 << 20), "512M");
    }

    #[test]
    fn shortfall_names_the_resource() {
        let free = res(1000, 1 << 30, 0);
        let err = free.checked_sub(&res(500, 2 << 30, 0)).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
        let err = free.checked_sub(&res(0, 0, 1)).unwrap_err();
        assert!(err.to_string().contains("lic"), "{err}");
    }

    proptest! {
        #[test]
        fn sub_then_add_round_trips(a in 0u64..1 << 40, b in 0u64..1 << 40, c in 0u64..100, d in 0u64..100) {
            let total = res(a.max(b), a.max(b), c.max(d));
            let req = res(a.min(b), a.min(b), c.min(d));
            let free = total.checked_sub(&req).expect("the request fits");
            prop_assert!(total.fits(&req));
            prop_assert_eq!(free.checked_add(&req).expect("within u64"), total);
        }

        #[test]
        fn never_underflows(a in any::<u64>(), b in any::<u64>()) {
            let r = res(a, 0, 0).checked_sub(&res(b, 0, 0));
            prop_assert_eq!(r.is_ok(), b <= a);
        }

        #[test]
        fn never_overflows_silently(a in any::<u64>(), b in any::<u64>()) {
            let r = res(0, a, 0).checked_add(&res(0, b, 0));
            prop_assert_eq!(r.is_ok(), a.checked_add(b).is_some());
        }
    }
}
