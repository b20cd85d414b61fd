//! Covering a query window with tiles, largest first.

use serde::Serialize;

/// A run of consecutive tiles of one size: starts `start, start + size, ...` below `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TileRange {
    pub size_ms: i64,
    pub start: i64,
    pub end: i64,
}

impl TileRange {
    pub fn tiles(&self) -> u64 {
        ((self.end - self.start) / self.size_ms) as u64
    }
}

/// The tiles that answer a window, and the interval they actually cover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cover {
    /// Covered interval `[start, end)`, milliseconds since the Unix epoch.
    pub start: i64,
    pub end: i64,
    /// Tile runs, largest tile size first.
    pub ranges: Vec<TileRange>,
}

fn ceil_to(t: i64, size: i64) -> i64 {
    -((-t).div_euclid(size) * size)
}

fn floor_to(t: i64, size: i64) -> i64 {
    t.div_euclid(size) * size
}

/// Covers the window of length `window_ms` that ends at `end_ms` with aligned
/// tiles of `sizes_ms` (each a multiple of the smallest), using the largest
/// tiles that fit and filling the edges with smaller ones.
///
/// The window is exact to the smallest tile: its end is rounded up to the
/// smallest tile boundary (so the current, still-filling tile counts) and its
/// start moves by the same amount, rounded up if the window is not a whole
/// number of smallest tiles. The returned [`Cover`] says which interval that is.
pub fn cover(end_ms: i64, window_ms: i64, sizes_ms: &[i64]) -> Cover {
    let mut sizes: Vec<i64> = sizes_ms.iter().copied().filter(|s| *s > 0).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    let Some(&smallest) = sizes.last() else {
        return Cover {
            start: end_ms,
            end: end_ms,
            ranges: Vec::new(),
        };
    };
    let end = ceil_to(end_ms, smallest);
    let start = ceil_to(
        end_ms.saturating_sub(window_ms.max(0)) + (end - end_ms),
        smallest,
    )
    .min(end);
    let mut ranges = Vec::new();
    cover_rec(start, end, &sizes, &mut ranges);
    ranges.sort_by(|a, b| b.size_ms.cmp(&a.size_ms).then(a.start.cmp(&b.start)));
    Cover { start, end, ranges }
}

fn cover_rec(s: i64, e: i64, sizes: &[i64], out: &mut Vec<TileRange>) {
    if s >= e {
        return;
    }
    let Some((&size, rest)) = sizes.split_first() else {
        return;
    };
    if rest.is_empty() {
        out.push(TileRange {
            size_ms: size,
            start: s,
            end: e,
        });
        return;
    }
    let (a, b) = (ceil_to(s, size), floor_to(e, size));
    if a < b {
        cover_rec(s, a, rest, out);
        out.push(TileRange {
            size_ms: size,
            start: a,
            end: b,
        });
        cover_rec(b, e, rest, out);
    } else {
        cover_rec(s, e, rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;

    /// Brute force: every smallest tile of the covered interval is in exactly one range.
    fn check_exact(c: &Cover, smallest: i64) {
        let mut t = c.start;
        while t < c.end {
            let hits = c
                .ranges
                .iter()
                .filter(|r| r.start <= t && t < r.end)
                .count();
            assert_eq!(hits, 1, "minute {t} covered {hits} times in {c:?}");
            t += smallest;
        }
        for r in &c.ranges {
            assert_eq!(r.start % r.size_ms, 0);
            assert_eq!(r.end % r.size_ms, 0);
            assert!(r.start >= c.start && r.end <= c.end);
        }
    }

    #[test]
    fn two_hours_mid_minute() {
        let at = 10 * D + 13 * H + 17 * M + 25_000; // 13:17:25
        let c = cover(at, 2 * H, &[M, 30 * M, D]);
        assert_eq!(c.end, 10 * D + 13 * H + 18 * M);
        assert_eq!(c.end - c.start, 2 * H);
        check_exact(&c, M);
        // 11:18..11:30 in minutes, 11:30..13:00 in 30m tiles, 13:00..13:18 in minutes.
        assert_eq!(
            c.ranges[0],
            TileRange {
                size_ms: 30 * M,
                start: 10 * D + 11 * H + 30 * M,
                end: 10 * D + 13 * H
            }
        );
        assert_eq!(
            c.ranges.iter().map(TileRange::tiles).sum::<u64>(),
            12 + 3 + 18
        );
    }

    #[test]
    fn day_windows_use_day_tiles_when_aligned() {
        let c = cover(5 * D, 2 * D, &[D, M, 30 * M]);
        assert_eq!(
            c.ranges,
            vec![TileRange {
                size_ms: D,
                start: 3 * D,
                end: 5 * D
            }]
        );
    }

    #[test]
    fn odd_windows_and_sizes_cover_exactly() {
        for (at, w) in [
            (7 * D + 5 * M + 1, 95 * M + 30_000),
            (D - 1, 25 * H),
            (123_456_789, 0),
            (-5 * M - 7, 2 * H),
        ] {
            let c = cover(at, w, &[M, 30 * M, D]);
            check_exact(&c, M);
            assert!(c.end >= at && c.end - at < M);
            assert!(c.end - c.start <= w && w - (c.end - c.start) < M);
        }
    }
}
