//! The read planner: which requests one scan sends. Sans-IO.
//!
//! Tags of the same poll interval, unit id and kind are merged into as few reads as the rules
//! allow: a read spans at most 125 registers (2000 bits for coils and discrete inputs) and never
//! skips more than `max_gap` unused addresses between two tags. Tags are sorted by address and a
//! read is extended while both rules hold; for non-overlapping tags this greedy cut is minimal
//! (any read that starts at a tag can cover no further than the greedy one does).
//!
//! A device that answers a merged read with "illegal data address" or "illegal data value" (the
//! two exceptions a read's length or a hole in the device's map causes) gets the read split in
//! two halves, recursively; the split is kept for the life of the worker, so the exception is
//! paid once. A read of a single tag that still fails is that tag's bad-quality record.

use std::collections::BTreeMap;

use iot_connector_config::RegisterKind;
use tokio_modbus::{ExceptionCode, Request};

/// The `register_kind` column text.
pub fn kind_name(kind: RegisterKind) -> &'static str {
    match kind {
        RegisterKind::Holding => "holding",
        RegisterKind::Input => "input",
        RegisterKind::Coil => "coil",
        RegisterKind::Discrete => "discrete",
    }
}

/// Where one tag lives on the device and how often it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Unit (slave) id.
    pub unit_id: u8,
    /// Modbus table.
    pub kind: RegisterKind,
    /// First address.
    pub address: u16,
    /// Addresses occupied (registers, or 1 bit), at least 1.
    pub count: u16,
    /// Poll interval.
    pub interval_ms: u64,
}

impl Tag {
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Unit (slave) id.
    pub unit_id: u8,
    /// Modbus table.
    pub kind: RegisterKind,
    /// First address read.
    pub start: u16,
    /// Addresses read.
    pub count: u16,
    /// Indexes of the tags served, in address order.
    pub tags: Vec<usize>,
}

impl Block {
    /// The smallest read covering `members` (indexes into `tags`, all of one unit id and kind).
    fn spanning(tags: &[Tag], members: Vec<usize>) -> Option<Self> {
        let first = tags.get(*members.first()?)?;
        let start = members
            .iter()
            .filter_map(|i| tags.get(*i))
            .map(|t| t.address)
            .min()?;
        let end = members
            .iter()
            .filter_map(|i| tags.get(*i))
            .map(Tag::end)
            .max()?;
        Some(Self {
            unit_id: first.unit_id,
            kind: first.kind,
            start,
            count: u16::try_from(end - u32::from(start)).ok()?,
            tags: members,
        })
    }

    /// The request that reads this block.
    pub fn request(&self) -> Request<'static> {
        match self.kind {
            RegisterKind::Holding => Request::ReadHoldingRegisters(self.start, self.count),
            RegisterKind::Input => Request::ReadInputRegisters(self.start, self.count),
            RegisterKind::Coil => Request::ReadCoils(self.start, self.count),
            RegisterKind::Discrete => Request::ReadDiscreteInputs(self.start, self.count),
        }
    }
}

/// The reads of one poll interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// How often these blocks are read.
    pub interval_ms: u64,
    /// The reads, ordered by unit id, kind and address.
    pub blocks: Vec<Block>,
}

/// Every read of the source, grouped by poll interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One group per distinct poll interval, shortest first.
    pub groups: Vec<Group>,
}

/// Whether an exception to a merged read can be caused by the read's extent (its length, or an
/// address inside it the device does not have), so that smaller reads may succeed. Gateway and
/// busy exceptions concern the whole device: splitting would only multiply the requests.
pub fn split_helps(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
    )
}

impl Plan {
    /// Plans the reads of `tags`, merging within `max_gap` unused addresses.
    pub fn new(tags: &[Tag], max_gap: u16) -> Self {
        let mut runs: BTreeMap<(u64, u8, RegisterKind), Vec<usize>> = BTreeMap::new();
        for (i, tag) in tags.iter().enumerate() {
            runs.entry((tag.interval_ms, tag.unit_id, tag.kind))
                .or_default()
                .push(i);
        }
        let mut groups: BTreeMap<u64, Vec<Block>> = BTreeMap::new();
        for ((interval_ms, _, kind), mut members) in runs {
            members.sort_by_key(|i| tags.get(*i).map(|t| (t.address, t.end())));
            groups.entry(interval_ms).or_default().extend(merge(
                tags,
                &members,
                max_gap,
                kind.max_read(),
            ));
        }
        Self {
            groups: groups
                .into_iter()
                .map(|(interval_ms, blocks)| Group {
                    interval_ms,
                    blocks,
                })
                .collect(),
        }
    }

    /// Requests one scan of every group sends.
    pub fn requests(&self) -> usize {
        self.groups.iter().map(|g| g.blocks.len()).sum()
    }

    /// Replaces block `block` of group `group` by two reads of half its tags each. `false` when
    /// it serves a single tag (nothing left to split) or does not exist.
    pub fn split(&mut self, tags: &[Tag], group: usize, block: usize) -> bool {
        let Some(blocks) = self.groups.get_mut(group).map(|g| &mut g.blocks) else {
            return false;
        };
        let Some(old) = blocks.get(block) else {
            return false;
        };
        if old.tags.len() < 2 {
            return false;
        }
        let mut first = old.tags.clone();
        let second = first.split_off(first.len() / 2);
        let (Some(a), Some(b)) = (Block::spanning(tags, first), Block::spanning(tags, second))
        else {
            return false;
        };
        blocks.splice(block..=block, [a, b]);
        true
    }
}

/// Greedy merge of `members` (one unit id and kind, sorted by address).
fn merge(tags: &[Tag], members: &[usize], max_gap: u16, max_len: u16) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let (mut start, mut end) = (0u32, 0u32);
    for &i in members {
        let Some(tag) = tags.get(i) else { continue };
        let fits = !current.is_empty()
            && i64::from(tag.address) - i64::from(end) <= i64::from(max_gap)
            && end.max(tag.end()) - start <= u32::from(max_len);
        if fits {
            end = end.max(tag.end());
        } else {
            if let Some(block) = Block::spanning(tags, std::mem::take(&mut current)) {
                blocks.push(block);
            }
            start = u32::from(tag.address);
            end = tag.end();
        }
        current.push(i);
    }
    if let Some(block) = Block::spanning(tags, current) {
        blocks.push(block);
    }
    blocks
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tag(unit_id: u8, kind: RegisterKind, address: u16, count: u16) -> Tag {
        Tag {
            unit_id,
            kind,
            address,
            count,
            interval_ms: 1000,
        }
    }

    fn spans(plan: &Plan) -> Vec<(u8, RegisterKind, u16, u16)> {
        plan.groups
            .iter()
            .flat_map(|g| &g.blocks)
            .map(|b| (b.unit_id, b.kind, b.start, b.count))
            .collect()
    }

    use RegisterKind::{Coil, Discrete, Holding, Input};

    #[test]
    fn neighbours_within_the_gap_share_one_read() {
        let tags = vec![
            tag(1, Holding, 0, 2),
            tag(1, Holding, 12, 1), // 10 unused addresses after the first: still merged
            tag(1, Holding, 24, 4), // 11 unused: a new read
        ];
        let plan = Plan::new(&tags, 10);
        assert_eq!(spans(&plan), vec![(1, Holding, 0, 13), (1, Holding, 24, 4)]);
        assert_eq!(plan.groups[0].blocks[0].tags, vec![0, 1]);
    }

    #[test]
    fn a_read_never_spans_more_than_125_registers_or_2000_bits() {
        let regs: Vec<Tag> = (0..300).map(|a| tag(1, Input, a, 1)).collect();
        let plan = Plan::new(&regs, 10);
        assert_eq!(
            spans(&plan),
            vec![
                (1, Input, 0, 125),
                (1, Input, 125, 125),
                (1, Input, 250, 50)
            ]
        );
        let bits: Vec<Tag> = (0..4500).map(|a| tag(1, Coil, a, 1)).collect();
        let plan = Plan::new(&bits, 10);
        assert_eq!(
            spans(&plan),
            vec![
                (1, Coil, 0, 2000),
                (1, Coil, 2000, 2000),
                (1, Coil, 4000, 500)
            ]
        );
        // A float64 at 122 does not fit behind 0..122: it starts the next read.
        let tags = vec![tag(1, Holding, 0, 122), tag(1, Holding, 122, 4)];
        assert_eq!(Plan::new(&tags, 10).requests(), 2);
    }

    #[test]
    fn unit_ids_kinds_and_intervals_are_never_merged() {
        let mut slow = tag(1, Holding, 2, 1);
        slow.interval_ms = 5000;
        let tags = vec![
            tag(1, Holding, 0, 1),
            tag(2, Holding, 1, 1),
            tag(1, Input, 1, 1),
            tag(1, Discrete, 1, 1),
            slow,
        ];
        let plan = Plan::new(&tags, 10);
        assert_eq!(plan.requests(), 5);
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[1].interval_ms, 5000);
        assert_eq!(plan.groups[1].blocks[0].tags, vec![4]);
    }

    #[test]
    fn overlapping_tags_share_their_registers() {
        // A float32 and its two halves as uint16: one read of 2 registers.
        let tags = vec![
            tag(1, Holding, 10, 2),
            tag(1, Holding, 10, 1),
            tag(1, Holding, 11, 1),
        ];
        assert_eq!(spans(&Plan::new(&tags, 0)), vec![(1, Holding, 10, 2)]);
    }

    #[test]
    fn a_zero_gap_merges_only_adjacent_tags() {
        let tags = vec![
            tag(1, Holding, 0, 1),
            tag(1, Holding, 1, 2),
            tag(1, Holding, 4, 1),
        ];
        assert_eq!(
            spans(&Plan::new(&tags, 0)),
            vec![(1, Holding, 0, 3), (1, Holding, 4, 1)]
        );
    }

    #[test]
    fn the_last_addresses_of_the_map_are_planned() {
        let tags = vec![tag(1, Holding, 65531, 4), tag(1, Holding, 65535, 1)];
        assert_eq!(spans(&Plan::new(&tags, 10)), vec![(1, Holding, 65531, 5)]);
    }

    #[test]
    fn a_split_halves_the_read_and_is_kept() {
        let tags: Vec<Tag> = (0..8).map(|a| tag(1, Holding, a * 2, 2)).collect();
        let mut plan = Plan::new(&tags, 10);
        assert_eq!(spans(&plan), vec![(1, Holding, 0, 16)]);
        assert!(plan.split(&tags, 0, 0));
        assert_eq!(spans(&plan), vec![(1, Holding, 0, 8), (1, Holding, 8, 8)]);
        assert!(plan.split(&tags, 0, 1));
        assert_eq!(
            spans(&plan),
            vec![(1, Holding, 0, 8), (1, Holding, 8, 4), (1, Holding, 12, 4)]
        );
        assert!(plan.split(&tags, 0, 1));
        assert!(!plan.split(&tags, 0, 1), "a single tag cannot be split");
        assert!(!plan.split(&tags, 0, 99));
        assert!(!plan.split(&tags, 7, 0));
        assert_eq!(plan.requests(), 4);
    }

    #[test]
    fn only_extent_exceptions_split() {
        assert!(split_helps(ExceptionCode::IllegalDataAddress));
        assert!(split_helps(ExceptionCode::IllegalDataValue));
        assert!(!split_helps(ExceptionCode::GatewayTargetDevice));
        assert!(!split_helps(ExceptionCode::ServerDeviceBusy));
        assert!(!split_helps(ExceptionCode::IllegalFunction));
    }

    #[test]
    fn requests_match_the_kind() {
        let block = |kind| Block {
            unit_id: 1,
            kind,
            start: 7,
            count: 3,
            tags: vec![0],
        };
        assert_eq!(
            block(Holding).request(),
            Request::ReadHoldingRegisters(7, 3)
        );
        assert_eq!(block(Input).request(), Request::ReadInputRegisters(7, 3));
        assert_eq!(block(Coil).request(), Request::ReadCoils(7, 3));
        assert_eq!(block(Discrete).request(), Request::ReadDiscreteInputs(7, 3));
    }

    /// The fewest reads covering sorted, non-overlapping tags, by dynamic programming over every
    /// possible cut: the reference the greedy planner must match.
    fn fewest_reads(tags: &[Tag], max_gap: u16, max_len: u16) -> usize {
        let n = tags.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for j in 1..=n {
            for i in 0..j {
                let run = &tags[i..j];
                let span = run.last().unwrap().end() - u32::from(run[0].address);
                let gaps_ok = run
                    .windows(2)
                    .all(|w| u32::from(w[1].address) - w[0].end() <= u32::from(max_gap));
                if span <= u32::from(max_len) && gaps_ok && best[i] != usize::MAX {
                    best[j] = best[j].min(best[i] + 1);
                }
            }
        }
        best[n]
    }

    proptest! {
        #[test]
        fn the_plan_is_minimal_and_covers_every_tag(
            layout in proptest::collection::vec((0u16..40, 1u16..9), 1..120),
            max_gap in 0u16..20,
        ) {
            let mut address = 0u16;
            let mut tags = Vec::new();
            for (gap, count) in layout {
                address = address.saturating_add(gap);
                if u32::from(address) + u32::from(count) > 65536 {
                    break;
                }
                tags.push(tag(1, Holding, address, count));
                address = address.saturating_add(count);
            }
            let plan = Plan::new(&tags, max_gap);
            prop_assert_eq!(plan.requests(), fewest_reads(&tags, max_gap, Holding.max_read()));
            let mut served: Vec<usize> = plan.groups.iter().flat_map(|g| &g.blocks).flat_map(|b| {
                for i in &b.tags {
                    let t = &tags[*i];
                    let end = u32::from(b.start) + u32::from(b.count);
                    assert!(t.address >= b.start && t.end() <= end);
                }
                assert!(b.count <= Holding.max_read());
                b.tags.clone()
            }).collect();
            served.sort_unstable();
            prop_assert_eq!(served, (0..tags.len()).collect::<Vec<_>>());
        }
    }
}
