//! The canary split: a request goes to the canary with probability weight/100. Sticky clients
//! are hashed into 10,000 buckets and a bucket is on the canary when it is below
//! weight × 100 — so raising the weight only adds buckets (a client on the canary at 5 % is
//! still on it at 20 %), and one client sees one arm between changes.

/// Buckets of the split: a weight resolution of 0.01 %.
pub const BUCKETS: u32 = 10_000;

/// A stable bucket for a sticky id (FNV-1a, then a 64-bit finaliser to spread short ids).
/// Deliberately not `std`'s hasher, whose output may change between Rust releases and would
/// move clients across arms on an upgrade.
pub fn bucket(id: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(BUCKETS)) as u32
}

/// A bucket for a request without a sticky id.
pub fn random_bucket() -> u32 {
    fastrand::u32(..BUCKETS)
}

/// Whether `bucket` is on the canary at `weight_percent`.
pub fn on_canary(weight_percent: f64, bucket: u32) -> bool {
    f64::from(bucket) < weight_percent * f64::from(BUCKETS) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn random_split_is_within_one_percent_over_20000_requests() {
        let n = 20_000;
        let canary = (0..n).filter(|_| on_canary(10.0, random_bucket())).count();
        let share = canary as f64 / n as f64;
        assert!((share - 0.10).abs() <= 0.01, "{share}");
    }

    #[test]
    fn sticky_ids_spread_evenly_and_keep_their_arm_when_the_weight_grows() {
        let keys: Vec<String> = (0..1000).map(|i| format!("team-{i}")).collect();
        let at5: Vec<bool> = keys
            .iter()
            .map(|k| on_canary(5.0, bucket(k.as_bytes())))
            .collect();
        let at20: Vec<bool> = keys
            .iter()
            .map(|k| on_canary(20.0, bucket(k.as_bytes())))
            .collect();
        for (a, b) in at5.iter().zip(&at20) {
            assert!(!a || *b, "a key on canary at 5 % left it at 20 %");
        }
        let n5 = at5.iter().filter(|x| **x).count();
        let n20 = at20.iter().filter(|x| **x).count();
        assert!((30..=70).contains(&n5), "{n5}");
        assert!((160..=240).contains(&n20), "{n20}");
        // Same id, same bucket, every time.
        assert_eq!(bucket(b"team-1"), bucket(b"team-1"));
    }

    #[test]
    fn edges() {
        assert!(!on_canary(0.0, 0));
        assert!(on_canary(100.0, BUCKETS - 1));
        assert!(on_canary(0.01, 0) && !on_canary(0.01, 1));
    }

    proptest! {
        #[test]
        fn raising_the_weight_never_moves_a_client_off_the_canary(
            id in proptest::collection::vec(any::<u8>(), 0..40),
            w1 in 0.0f64..100.0,
            extra in 0.0f64..100.0,
        ) {
            let b = bucket(&id);
            let w2 = (w1 + extra).min(100.0);
            prop_assert!(!on_canary(w1, b) || on_canary(w2, b));
        }
    }
}
