//! Union-find forests of linked accounts, one per generation (docs/link.md, "Clusters and generations").

use super::*;

// ---------------------------------------------------------------------------------------------------------------
// Union-find

#[derive(Clone, Copy, Debug)]
pub(super) struct Node {
    pub(super) account: u64,
    /// Cluster id (roots only; 0 = none yet).
    id: u64,
    formed_at: Nanos,
    parent: u32,
    size: u32,
    pub(super) rules: u32,
    pub(super) strength: u8,
}

/// One union-find forest: nodes by account, and cluster ids to some node of their component.
#[derive(Debug, Default)]
pub(super) struct Forest {
    pub(super) nodes: Vec<Node>,
    by_account: FastMap<u64, u32>,
    pub(super) by_id: FastMap<u64, u32>,
    /// Roots that took an id another component of this forest already holds (resolved at rotation).
    dups: Vec<u32>,
    pub(super) unions: usize,
}

/// The older of two clusters' (id, formed_at, size); id 0 means "no cluster yet".
pub(super) fn older(a: (u64, Nanos, u32), b: (u64, Nanos, u32)) -> (u64, Nanos) {
    let pick = match (a.0, b.0) {
        (0, _) => b,
        (_, 0) => a,
        _ => {
            let ka = (a.1, std::cmp::Reverse(a.2), a.0);
            let kb = (b.1, std::cmp::Reverse(b.2), b.0);
            if ka <= kb {
                a
            } else {
                b
            }
        }
    };
    (pick.0, pick.1)
}

impl Forest {
    pub(super) fn get(&self, account: u64) -> Option<u32> {
        self.by_account.get(&account).copied()
    }

    fn node(&mut self, account: u64) -> u32 {
        let next = self.nodes.len() as u32;
        let i = *self.by_account.entry(account).or_insert(next);
        if i == next {
            self.nodes.push(Node {
                account,
                id: 0,
                formed_at: 0,
                parent: next,
                size: 1,
                rules: 0,
                strength: 0,
            });
        }
        i
    }

    pub(super) fn find(&mut self, mut i: u32) -> u32 {
        loop {
            let p = self.nodes[i as usize].parent;
            if p == i {
                return i;
            }
            let gp = self.nodes[p as usize].parent;
            self.nodes[i as usize].parent = gp;
            i = gp;
        }
    }

    pub(super) fn find_ro(&self, mut i: u32) -> u32 {
        loop {
            let p = self.nodes[i as usize].parent;
            if p == i {
                return i;
            }
            i = p;
        }
    }

    /// Joins the components of `a` and `b`; returns (root, pre-merge root of a, pre-merge root of b).
    fn join(&mut self, a: u64, b: u64) -> (u32, Node, Node) {
        let ia = self.node(a);
        let ib = self.node(b);
        let ra = self.find(ia);
        let rb = self.find(ib);
        let (na, nb) = (self.nodes[ra as usize], self.nodes[rb as usize]);
        if ra == rb {
            return (ra, na, na);
        }
        let (w, l) = if (na.size, std::cmp::Reverse(ra)) >= (nb.size, std::cmp::Reverse(rb)) {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.nodes[l as usize].parent = w;
        self.nodes[w as usize].size = na.size + nb.size;
        self.unions += 1;
        (w, na, nb)
    }

    fn set_meta(
        &mut self,
        w: u32,
        na: &Node,
        nb: &Node,
        strength: u8,
        rules: u32,
        id: (u64, Nanos),
    ) {
        let n = &mut self.nodes[w as usize];
        n.id = id.0;
        n.formed_at = id.1;
        n.strength = na.strength.max(nb.strength).max(strength);
        n.rules = na.rules | nb.rules | rules;
    }

    fn fresh_id(&self, seed: u64) -> u64 {
        let mut id = murmur3_fmix64(ID_SALT ^ seed);
        while id == 0 || self.by_id.contains_key(&id) {
            id = murmur3_fmix64(id ^ GOLDEN);
        }
        id
    }

    /// Links in the forest of record (`live`): ids are unique here. Returns the cluster's (id, formed_at); an id
    /// that ends in the merge is pushed to `merges` with the id that absorbed it.
    pub(super) fn link_live(
        &mut self,
        (a, b): (u64, u64),
        strength: u8,
        rules: u32,
        now: Nanos,
        merges: &mut Vec<(u64, u64)>,
    ) -> (u64, Nanos) {
        let (w, na, nb) = self.join(a, b);
        let mut chosen = older(
            (na.id, na.formed_at, na.size),
            (nb.id, nb.formed_at, nb.size),
        );
        if chosen.0 == 0 {
            let seed = murmur3_combine(murmur3_combine(a.min(b), a.max(b)), now);
            chosen = (self.fresh_id(seed), now);
            self.by_id.insert(chosen.0, w);
        }
        for old in [na.id, nb.id] {
            if old != 0 && old != chosen.0 {
                self.by_id.remove(&old);
                merges.push((old, chosen.0));
            }
        }
        self.set_meta(w, &na, &nb, strength, rules, chosen);
        chosen
    }

    /// Links in `cur`, adopting the cluster's id from `live`; ids may repeat here (see `dups`).
    pub(super) fn link_adopt(
        &mut self,
        a: u64,
        b: u64,
        strength: u8,
        rules: u32,
        id: (u64, Nanos),
    ) {
        let (w, na, nb) = self.join(a, b);
        for old in [na.id, nb.id] {
            if old != 0 && old != id.0 {
                if let Some(n) = self.by_id.get(&old).copied() {
                    if self.find(n) == w {
                        self.by_id.remove(&old);
                    }
                }
            }
        }
        match self.by_id.get(&id.0).copied() {
            None => {
                self.by_id.insert(id.0, w);
            }
            Some(n) => {
                if self.find(n) != w {
                    self.dups.push(w);
                }
            }
        }
        self.set_meta(w, &na, &nb, strength, rules, id);
    }

    /// Makes ids unique again after this forest became `live`: the larger component keeps a shared id.
    pub(super) fn resolve_dups(&mut self, now: Nanos) {
        let dups = std::mem::take(&mut self.dups);
        for &d in &dups {
            let r = self.find(d);
            let id = self.nodes[r as usize].id;
            let Some(n) = self.by_id.get(&id).copied() else {
                self.by_id.insert(id, r);
                continue;
            };
            let m = self.find(n);
            if m == r {
                continue;
            }
            let (keep, give) = if self.nodes[r as usize].size > self.nodes[m as usize].size {
                (r, m)
            } else {
                (m, r)
            };
            self.by_id.insert(id, keep);
            let fresh = self.fresh_id(murmur3_combine(
                murmur3_combine(id, self.nodes[give as usize].account),
                now,
            ));
            let g = &mut self.nodes[give as usize];
            g.id = fresh;
            g.formed_at = now;
            self.by_id.insert(fresh, give);
        }
        self.dups = dups;
        self.dups.clear();
    }

    pub(super) fn clear(&mut self, keep: usize) {
        self.nodes.clear();
        self.by_account.clear();
        self.by_id.clear();
        self.dups.clear();
        self.unions = 0;
        let keep = keep.max(FOREST_KEEP);
        if self.nodes.capacity() > 2 * keep {
            self.nodes.shrink_to(keep);
            self.by_account.shrink_to(keep);
            self.by_id.shrink_to(keep / 2);
        }
    }

    pub(super) fn view(&self, root: u32) -> Option<ClusterView> {
        let n = &self.nodes[root as usize];
        Some(ClusterView {
            id: n.id,
            members: n.size,
            strength: Strength::from_level(n.strength)?,
            rules: n.rules,
            formed_at: n.formed_at,
        })
        .filter(|v| v.members >= 2 && v.id != 0)
    }

    pub(super) fn root_of_id(&self, id: u64) -> Option<u32> {
        let r = self.find_ro(*self.by_id.get(&id)?);
        (self.nodes[r as usize].id == id).then_some(r)
    }

    pub(super) fn bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + map_bytes(&self.by_account)
            + map_bytes(&self.by_id)
            + self.dups.capacity() * size_of::<u32>()
    }
}
