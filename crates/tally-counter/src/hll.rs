//! HyperLogLog sketches of distinct members: how many different visitors a page had,
//! in about 12–16 KiB per page whatever the number of visitors.
//!
//! [`HyperLogLog`] is what an in-process store ([`crate::MemoryStore`], `tally-embedded`)
//! keeps for [`crate::Store::sketch`]. It is register-compatible with Redis's HyperLogLog
//! (`PFADD` / `PFCOUNT`): the same hash (MurmurHash64A, seed `0xadc83b19`), the same
//! 16,384 registers (precision 14), the same estimator (Otmar Ertl's, which Redis uses
//! since 5.0). So the embedded stores and the Redis store give the same estimate for the
//! same visitors, and moving a deployment from one to the other changes no number.
//!
//! # Idempotence
//!
//! A register only ever takes the larger of its value and a member's, so adding a member
//! the sketch already holds changes nothing: [`HyperLogLog::insert`] returns `false` and
//! the estimate stays. This is why the counter can send adds at least once, retrying a
//! failed add as it is, with no batch id: a repeated add cannot count a visitor twice.
//! [`HyperLogLog::merge`] is idempotent, commutative and associative for the same reason.
//!
//! # Memory
//!
//! A sketch starts sparse: a sorted list of the registers that are not zero, 4 bytes
//! each, so a page with few visitors costs a few bytes. Once that list would take more
//! memory than every register does (4,096 registers set), it turns dense: one byte for
//! each of the 16,384 registers, 16 KiB. [`HyperLogLog::to_bytes`] writes the dense form
//! in 6 bits a register, 12 KiB, as Redis does. The estimate does not depend on the form.
//!
//! # Accuracy
//!
//! The relative standard error is [`STANDARD_ERROR`] (1.04 / √16,384 ≈ 0.81%): about two
//! estimates in three are within 0.81% of the truth, and nearly all within 2.5%. Small
//! sets are counted nearly exactly (a handful of members, exactly).
//!
//! ```
//! use tally_counter::hll::HyperLogLog;
//!
//! let mut visitors = HyperLogLog::new();
//! assert!(visitors.insert(b"visitor-1"));
//! assert!(visitors.insert(b"visitor-2"));
//! assert!(!visitors.insert(b"visitor-1"), "a member added again changes nothing");
//! assert_eq!(visitors.estimate(), 2);
//!
//! let stored = visitors.to_bytes();
//! assert_eq!(HyperLogLog::from_bytes(&stored)?, visitors);
//! # Ok::<(), tally_counter::Error>(())
//! ```

use std::fmt;

use crate::error::{Error, Result};

/// Relative standard error of an estimate: 1.04 / √16,384.
pub const STANDARD_ERROR: f64 = 0.0081;

/// Bits of a member's hash that choose its register (Redis's `HLL_P`).
pub const PRECISION: u32 = 14;

/// Number of registers: 2^[`PRECISION`].
pub const REGISTERS: usize = 1 << PRECISION;

/// Bits of the hash left to count trailing zeros in (Redis's `HLL_Q`): a register holds
/// at most `Q + 1`.
const Q: u32 = 64 - PRECISION;

/// The largest value a register can hold.
const MAX_RHO: u8 = Q as u8 + 1;

/// Redis's seed for MurmurHash64A in its HyperLogLog.
const SEED: u64 = 0xadc8_3b19;

/// 0.5 / ln 2: the estimator's constant for an infinite number of registers
/// (Redis's `HLL_ALPHA_INF`).
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;

/// Sparse entries past which the dense form takes less memory: an entry is 4 bytes
/// (`(u16, u8)` with its padding), a dense register 1.
const SPARSE_MAX: usize = REGISTERS / std::mem::size_of::<(u16, u8)>();

/// Bytes of the registers packed 6 bits each (Redis's dense encoding).
const PACKED_LEN: usize = REGISTERS * 6 / 8;

/// The version byte that [`HyperLogLog::to_bytes`] writes first.
const FORMAT_VERSION: u8 = 1;
const TAG_SPARSE: u8 = 0;
const TAG_DENSE: u8 = 1;

/// A HyperLogLog sketch of distinct byte strings, register-compatible with Redis's: see
/// the [module docs](self).
///
/// Two sketches are equal when their registers are, whatever their form.
#[derive(Clone)]
pub struct HyperLogLog {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    /// `(register, value)` of every register that is not zero, by register ascending;
    /// at most [`SPARSE_MAX`] of them.
    Sparse(Vec<(u16, u8)>),
    /// Every register, one byte each ([`REGISTERS`] of them).
    Dense(Box<[u8]>),
}

impl HyperLogLog {
    /// An empty sketch (sparse, no allocation).
    pub fn new() -> Self {
        Self {
            repr: Repr::Sparse(Vec::new()),
        }
    }

    /// Adds `member`; returns whether a register changed (`false` when the sketch already
    /// held the member, or one that hashes alike).
    pub fn insert(&mut self, member: &[u8]) -> bool {
        let (index, rho) = register_of(member);
        self.raise(index, rho)
    }

    /// Adds every member of `other`: the sketch of the union of both sets. Returns
    /// whether a register changed.
    pub fn merge(&mut self, other: &HyperLogLog) -> bool {
        let mut changed = false;
        match &other.repr {
            Repr::Sparse(entries) => {
                for &(index, rho) in entries {
                    changed |= self.raise(index, rho);
                }
            }
            Repr::Dense(registers) => {
                self.make_dense();
                if let Repr::Dense(mine) = &mut self.repr {
                    for (mine, &theirs) in mine.iter_mut().zip(registers.iter()) {
                        if theirs > *mine {
                            *mine = theirs;
                            changed = true;
                        }
                    }
                }
            }
        }
        changed
    }

    /// The estimated number of distinct members added, as Redis's `PFCOUNT` computes it
    /// from the same registers.
    pub fn estimate(&self) -> u64 {
        let mut histogram = [0u32; MAX_RHO as usize + 1];
        match &self.repr {
            Repr::Sparse(entries) => {
                histogram[0] = (REGISTERS - entries.len()) as u32;
                for &(_, rho) in entries {
                    histogram[usize::from(rho)] += 1;
                }
            }
            Repr::Dense(registers) => {
                for &rho in registers.iter() {
                    histogram[usize::from(rho)] += 1;
                }
            }
        }
        ertl_estimate(&histogram)
    }

    /// Whether no member was ever added.
    pub fn is_empty(&self) -> bool {
        match &self.repr {
            Repr::Sparse(entries) => entries.is_empty(),
            Repr::Dense(registers) => registers.iter().all(|&rho| rho == 0),
        }
    }

    /// Whether the sketch is still in its sparse form (few registers set).
    pub fn is_sparse(&self) -> bool {
        matches!(self.repr, Repr::Sparse(_))
    }

    /// The value of every register, [`REGISTERS`] of them: the number of trailing zero
    /// bits plus one of the highest hash that chose it, 0 for none.
    pub fn registers(&self) -> Vec<u8> {
        match &self.repr {
            Repr::Sparse(entries) => {
                let mut registers = vec![0; REGISTERS];
                for &(index, rho) in entries {
                    registers[usize::from(index)] = rho;
                }
                registers
            }
            Repr::Dense(registers) => registers.to_vec(),
        }
    }

    /// The sketch in a small versioned format of tally's own, which
    /// [`HyperLogLog::from_bytes`] reads: a version byte (1), a form byte, then for a
    /// sparse sketch 3 bytes per register set (index `u16` little-endian, value), for a
    /// dense one the 16,384 registers packed 6 bits each, low bits first (12 KiB).
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.repr {
            Repr::Sparse(entries) => {
                let mut bytes = Vec::with_capacity(2 + 3 * entries.len());
                bytes.extend([FORMAT_VERSION, TAG_SPARSE]);
                for &(index, rho) in entries {
                    bytes.extend(index.to_le_bytes());
                    bytes.push(rho);
                }
                bytes
            }
            Repr::Dense(registers) => {
                let mut bytes = vec![0; 2 + PACKED_LEN];
                bytes[0] = FORMAT_VERSION;
                bytes[1] = TAG_DENSE;
                pack(registers, &mut bytes[2..]);
                bytes
            }
        }
    }

    /// Reads what [`HyperLogLog::to_bytes`] wrote.
    ///
    /// # Errors
    ///
    /// [`Error::SketchFormat`] when `bytes` are not such a sketch: another version, an
    /// unknown form, a wrong length, registers out of order or past their largest value.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |problem: String| Err(Error::SketchFormat { problem });
        let (version, tag, body) = match bytes {
            [version, tag, body @ ..] => (*version, *tag, body),
            _ => return bad(format!("{} bytes, fewer than its header", bytes.len())),
        };
        if version != FORMAT_VERSION {
            return bad(format!(
                "format version {version}, but this build reads {FORMAT_VERSION}"
            ));
        }
        let sketch = match tag {
            TAG_SPARSE => {
                if body.len() % 3 != 0 || body.len() / 3 > SPARSE_MAX {
                    return bad(format!("a sparse body of {} bytes", body.len()));
                }
                let mut entries = Vec::with_capacity(body.len() / 3);
                for chunk in body.chunks_exact(3) {
                    let index = u16::from_le_bytes([chunk[0], chunk[1]]);
                    let rho = chunk[2];
                    if usize::from(index) >= REGISTERS || rho == 0 || rho > MAX_RHO {
                        return bad(format!("register {index} set to {rho}"));
                    }
                    if entries.last().is_some_and(|&(last, _)| last >= index) {
                        return bad(format!("register {index} out of order"));
                    }
                    entries.push((index, rho));
                }
                Repr::Sparse(entries)
            }
            TAG_DENSE => {
                if body.len() != PACKED_LEN {
                    return bad(format!("a dense body of {} bytes", body.len()));
                }
                let registers = unpack(body);
                if let Some((index, rho)) = registers
                    .iter()
                    .enumerate()
                    .find(|&(_, &rho)| rho > MAX_RHO)
                {
                    return bad(format!("register {index} set to {rho}"));
                }
                Repr::Dense(registers.into_boxed_slice())
            }
            other => return bad(format!("unknown form {other}")),
        };
        Ok(Self { repr: sketch })
    }

    /// Raises register `index` to `rho` if it is lower; whether it was.
    fn raise(&mut self, index: u16, rho: u8) -> bool {
        match &mut self.repr {
            Repr::Sparse(entries) => {
                match entries.binary_search_by_key(&index, |&(at, _)| at) {
                    Ok(found) => {
                        let slot = &mut entries[found].1;
                        if rho <= *slot {
                            return false;
                        }
                        *slot = rho;
                    }
                    Err(at) => {
                        entries.insert(at, (index, rho));
                        if entries.len() > SPARSE_MAX {
                            self.make_dense();
                        }
                    }
                }
                true
            }
            Repr::Dense(registers) => {
                let slot = &mut registers[usize::from(index)];
                if rho <= *slot {
                    return false;
                }
                *slot = rho;
                true
            }
        }
    }

    fn make_dense(&mut self) {
        if self.is_sparse() {
            self.repr = Repr::Dense(self.registers().into_boxed_slice());
        }
    }
}

impl Default for HyperLogLog {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for HyperLogLog {
    fn eq(&self, other: &Self) -> bool {
        match (&self.repr, &other.repr) {
            (Repr::Sparse(a), Repr::Sparse(b)) => a == b,
            (Repr::Dense(a), Repr::Dense(b)) => a == b,
            _ => self.registers() == other.registers(),
        }
    }
}

impl Eq for HyperLogLog {}

impl fmt::Debug for HyperLogLog {
    /// The form and how many registers are set, not 16,384 numbers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = match &self.repr {
            Repr::Sparse(entries) => entries.len(),
            Repr::Dense(registers) => registers.iter().filter(|&&rho| rho > 0).count(),
        };
        f.debug_struct("HyperLogLog")
            .field("form", &if self.is_sparse() { "sparse" } else { "dense" })
            .field("registers_set", &set)
            .finish()
    }
}

/// The register `member` chooses and the value it offers it, as Redis's `hllPatLen`: the
/// low [`PRECISION`] bits of the hash pick the register; the value is the number of
/// trailing zeros of the remaining [`Q`] bits, plus one (at most `Q + 1`).
fn register_of(member: &[u8]) -> (u16, u8) {
    let hash = murmur64a(member, SEED);
    let index = (hash & (REGISTERS as u64 - 1)) as u16;
    let rest = (hash >> PRECISION) | (1 << Q);
    (index, rest.trailing_zeros() as u8 + 1)
}

/// MurmurHash64A (Austin Appleby's 64-bit MurmurHash2), reading 8-byte words
/// little-endian, as Redis does on the machines it runs on.
fn murmur64a(key: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (key.len() as u64).wrapping_mul(M);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut k = u64::from_le_bytes(word.try_into().unwrap_or_default());
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        h ^= u64::from_le_bytes(last);
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// Ertl's improved estimator ("New cardinality estimation algorithms for HyperLogLog
/// sketches", 2017) over the histogram of register values, computed step by step as
/// Redis's `hllCount` does, so the result is the same number to the last bit.
fn ertl_estimate(histogram: &[u32; MAX_RHO as usize + 1]) -> u64 {
    let m = REGISTERS as f64;
    let q = Q as usize;
    let mut z = m * tau((m - f64::from(histogram[q + 1])) / m);
    for k in (1..=q).rev() {
        z += f64::from(histogram[k]);
        z *= 0.5;
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    // An empty sketch has z infinite: 0. The estimate is at most a few times 2^64 / m
    // in theory, far past any set; the cast saturates.
    (ALPHA_INF * m * m / z).round() as u64
}

/// Ertl's σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k-1), summed until it stops changing.
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if previous == z {
            return z;
        }
    }
}

/// Ertl's τ(x) = (1 - x - Σ_{k≥1} (1 - x^(2^-k))² 2^-k) / 3, summed until it stops
/// changing.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if previous == z {
            return z / 3.0;
        }
    }
}

/// Packs `registers` (each below 64) 6 bits each into `out`, register `i` at bit `6 i`,
/// low bits first: Redis's dense layout.
fn pack(registers: &[u8], out: &mut [u8]) {
    for (index, &rho) in registers.iter().enumerate() {
        let bit = index * 6;
        let (byte, shift) = (bit / 8, bit % 8);
        let value = u16::from(rho & 63) << shift;
        out[byte] |= value as u8;
        if let Some(next) = out.get_mut(byte + 1) {
            *next |= (value >> 8) as u8;
        }
    }
}

/// The registers of a packed body ([`pack`]'s layout).
fn unpack(packed: &[u8]) -> Vec<u8> {
    (0..REGISTERS)
        .map(|index| {
            let bit = index * 6;
            let (byte, shift) = (bit / 8, bit % 8);
            let low = u16::from(packed.get(byte).copied().unwrap_or(0));
            let high = u16::from(packed.get(byte + 1).copied().unwrap_or(0));
            (((low | high << 8) >> shift) & 63) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct members `0..n` after `offset`, as 8-byte strings.
    fn members(offset: u64, n: u64) -> impl Iterator<Item = [u8; 8]> {
        (offset..offset + n).map(u64::to_le_bytes)
    }

    fn sketch_of(offset: u64, n: u64) -> HyperLogLog {
        let mut sketch = HyperLogLog::new();
        for member in members(offset, n) {
            sketch.insert(&member);
        }
        sketch
    }

    #[test]
    fn members_land_where_redis_puts_them() {
        // Read from Redis 7.0 (`PFADD k <member>` with `hll-sparse-max-bytes 0`, then the
        // registers of `GET k`); the tail lengths 0, 5, 0 (one word) and 7 after a word.
        // The integration test against a live Redis compares every register.
        let known: [(&[u8], u16, u8); 5] = [
            (b"hello", 9216, 1),
            (b"tally", 3982, 1),
            (b"", 5938, 2),
            (b"12345678", 10579, 3),
            (b"123456789abcdef", 1977, 3),
        ];
        for (member, index, rho) in known {
            assert_eq!(register_of(member), (index, rho), "{member:?}");
        }
    }

    #[test]
    fn an_empty_sketch_estimates_zero() {
        let sketch = HyperLogLog::new();
        assert!(sketch.is_empty());
        assert_eq!(sketch.estimate(), 0);
    }

    #[test]
    fn small_sets_are_counted_exactly() {
        for n in [1, 2, 3, 10] {
            assert_eq!(sketch_of(0, n).estimate(), n, "{n} members");
        }
    }

    #[test]
    fn estimates_are_within_three_standard_errors() {
        for n in [100, 1_000, 10_000, 100_000] {
            let estimate = sketch_of(1 << 40, n).estimate() as f64;
            let error = (estimate - n as f64).abs() / n as f64;
            assert!(
                error <= 3.0 * STANDARD_ERROR,
                "{n} members estimated {estimate} ({:.2}% off)",
                error * 100.0
            );
        }
    }

    #[test]
    fn estimate_at_100k_is_within_two_percent() {
        for offset in [0, 1 << 20, 1 << 40] {
            let estimate = sketch_of(offset, 100_000).estimate() as f64;
            let error = (estimate - 100_000.0).abs() / 100_000.0;
            assert!(error < 0.02, "estimated {estimate}");
        }
    }

    #[test]
    fn adding_members_again_changes_nothing() {
        for n in [50, 20_000] {
            let mut sketch = sketch_of(0, n);
            let (registers, estimate) = (sketch.registers(), sketch.estimate());

            let changed = members(0, n).filter(|member| sketch.insert(member)).count();

            assert_eq!(changed, 0, "inserts that changed a register");
            assert_eq!(sketch.registers(), registers);
            assert_eq!(sketch.estimate(), estimate);
        }
    }

    #[test]
    fn merge_is_the_sketch_of_the_union() {
        for (a, b) in [(10, 20), (3_000, 3_000), (50, 30_000), (30_000, 50)] {
            // `left` is members 0..a, `right` a/2..a/2 + b: overlapping, or one inside
            // the other.
            let mut left = sketch_of(0, a);
            let right = sketch_of(a / 2, b);
            let union = sketch_of(0, a.max(a / 2 + b));

            left.merge(&right);
            assert!(!left.merge(&right), "merging again changes nothing");

            assert_eq!(left, union, "{a} ∪ {b}");
            assert_eq!(left.estimate(), union.estimate());
        }
    }

    #[test]
    fn sparse_and_dense_forms_estimate_alike() {
        let mut sketch = HyperLogLog::new();
        let mut dense = HyperLogLog::new();
        dense.make_dense();
        let mut went_dense_at = None;
        for (i, member) in members(0, 20_000).enumerate() {
            sketch.insert(&member);
            dense.insert(&member);
            if went_dense_at.is_none() && !sketch.is_sparse() {
                went_dense_at = Some(i);
            }
            if i % 97 == 0 || went_dense_at == Some(i) {
                assert_eq!(sketch.estimate(), dense.estimate(), "after {i} members");
                assert_eq!(sketch, dense);
            }
        }
        assert!(
            went_dense_at.is_some(),
            "20,000 members make a sketch dense"
        );
        assert_eq!(sketch.registers(), dense.registers());
    }

    #[test]
    fn the_sparse_form_turns_dense_when_it_outgrows_it() {
        let mut sketch = HyperLogLog::new();
        let mut member = 0u64;
        while sketch.is_sparse() {
            let set = sketch.registers().iter().filter(|&&rho| rho > 0).count();
            assert!(set <= SPARSE_MAX);
            sketch.insert(&member.to_le_bytes());
            member += 1;
        }
        let set = sketch.registers().iter().filter(|&&rho| rho > 0).count();
        assert_eq!(set, SPARSE_MAX + 1);
    }

    #[test]
    fn bytes_round_trip_in_both_forms() {
        for n in [0, 1, 100, 5_000, 100_000] {
            let sketch = sketch_of(7, n);
            let bytes = sketch.to_bytes();

            let read = HyperLogLog::from_bytes(&bytes).unwrap();

            assert_eq!(read, sketch, "{n} members");
            assert_eq!(read.is_sparse(), sketch.is_sparse());
            assert_eq!(read.estimate(), sketch.estimate());
            assert_eq!(read.to_bytes(), bytes);
        }
    }

    #[test]
    fn garbage_bytes_are_an_error() {
        let dense = sketch_of(0, 10_000).to_bytes();
        let mut wrong_version = dense.clone();
        wrong_version[0] = 9;
        let mut high_register = dense.clone();
        high_register[2] = 63;
        let cases: [&[u8]; 9] = [
            b"",
            b"\x01",
            b"\x01\x07",
            &wrong_version,
            &dense[..dense.len() - 1],
            &high_register,
            b"\x01\x00\x01\x00",
            b"\x01\x00\x05\x00\x01\x05\x00\x01",
            b"\x01\x00\x05\x00\x00",
        ];
        for bytes in cases {
            let result = HyperLogLog::from_bytes(bytes);
            assert!(
                matches!(result, Err(Error::SketchFormat { .. })),
                "{bytes:?}: {result:?}"
            );
        }
        for seed in 0..200u64 {
            let noise: Vec<u8> = members(seed, 1 + seed % 40)
                .flat_map(|word| word.map(|b| b.wrapping_mul(31)))
                .collect();
            let _ = HyperLogLog::from_bytes(&noise);
        }
    }

    #[test]
    fn packing_is_redis_dense_layout() {
        let mut registers = vec![0u8; REGISTERS];
        registers[0] = 0b10_1010;
        registers[1] = 0b11_0011;
        registers[REGISTERS - 1] = 51;
        let mut packed = vec![0u8; PACKED_LEN];
        pack(&registers, &mut packed);
        // Register 0 in bits 0..6 of byte 0, register 1 in bits 6..8 of byte 0 and 0..4
        // of byte 1.
        assert_eq!(packed[0], 0b1110_1010);
        assert_eq!(packed[1], 0b0000_1100);
        assert_eq!(unpack(&packed), registers);
    }
}
