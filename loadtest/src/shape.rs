//! The DAG shapes the load test generates: the flows users write, not only a flat fan-out.
//!
//! - `fanout`: a root releasing `width` workers;
//! - `fanin`: the same, and a sink depending on every worker;
//! - `chain`: `length` tasks, each depending on the one before;
//! - `lattice`: `layers` × `width`, each task depending on two of the layer before (a diamond
//!   lattice: task j on j and j+1 of the previous layer);
//! - `grid`: `rows` × `cols`, each task depending on the one above it and the one to its left
//!   (wide and deep: a wavefront).

use std::fmt::Write as _;

use clap::ValueEnum;

use crate::agent::Runner;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Fanout,
    Fanin,
    Chain,
    Lattice,
    Grid,
}

/// A shape with its sizes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub kind: Kind,
    /// Workers of a fan-out or fan-in, tasks per lattice layer, columns of a grid.
    pub width: usize,
    /// Tasks of a chain, layers of a lattice, rows of a grid.
    pub depth: usize,
}

impl Shape {
    /// How many tasks the flow has.
    pub fn tasks(&self) -> usize {
        match self.kind {
            Kind::Fanout => self.width + 1,
            Kind::Fanin => self.width + 2,
            Kind::Chain => self.depth,
            Kind::Lattice | Kind::Grid => self.width * self.depth,
        }
    }

    /// The longest path through the DAG, in tasks: what a hop's latency is measured over.
    pub fn critical_path(&self) -> usize {
        match self.kind {
            Kind::Fanout => 2,
            Kind::Fanin => 3,
            Kind::Chain | Kind::Lattice => self.depth,
            Kind::Grid => self.width + self.depth - 1,
        }
    }

    /// The tasks on the longest path, for the shapes whose time is mostly hops (chains,
    /// lattices, grids); a fan-out's is its width's.
    pub fn hops(&self) -> Option<usize> {
        match self.kind {
            Kind::Fanout | Kind::Fanin => None,
            _ => Some(self.critical_path()),
        }
    }

    pub fn label(&self) -> String {
        match self.kind {
            Kind::Fanout => format!("fan-out, 1 root + {} workers", self.width),
            Kind::Fanin => format!("fan-out + fan-in, 1 root + {} workers + 1 sink", self.width),
            Kind::Chain => format!("chain of {}", self.depth),
            Kind::Lattice => format!("diamond lattice, {} layers x {}", self.depth, self.width),
            Kind::Grid => format!("grid, {} rows x {} columns", self.depth, self.width),
        }
    }

    /// The flow, as YAML, every task running `command` on the local launcher.
    pub fn flow(&self, command: &str) -> String {
        self.flow_on(&Runner::Local.fields(command))
    }

    /// The flow, as YAML, every task with these fields (its runner and command, as
    /// [`Runner::fields`] writes them).
    pub fn flow_on(&self, fields: &str) -> String {
        let mut s = String::with_capacity(self.tasks() * 96);
        let id = format!("loadtest-{}", format!("{:?}", self.kind).to_lowercase());
        let _ = writeln!(s, "id: {id}\ntasks:");
        let task = |s: &mut String, id: &str, deps: &[String]| {
            let _ = write!(s, "  - {{ id: {id}, {fields}");
            if !deps.is_empty() {
                let _ = write!(s, ", dependsOn: [{}]", deps.join(", "));
            }
            s.push_str(" }\n");
        };
        match self.kind {
            Kind::Fanout | Kind::Fanin => {
                task(&mut s, "root", &[]);
                let root = ["root".to_string()];
                for i in 0..self.width {
                    task(&mut s, &format!("w{i}"), &root);
                }
                if self.kind == Kind::Fanin {
                    let all: Vec<String> = (0..self.width).map(|i| format!("w{i}")).collect();
                    task(&mut s, "sink", &all);
                }
            }
            Kind::Chain => {
                for i in 0..self.depth {
                    let deps = if i == 0 {
                        vec![]
                    } else {
                        vec![format!("c{}", i - 1)]
                    };
                    task(&mut s, &format!("c{i}"), &deps);
                }
            }
            Kind::Lattice => {
                for l in 0..self.depth {
                    for j in 0..self.width {
                        let deps = if l == 0 {
                            vec![]
                        } else {
                            let mut d = vec![format!("l{}_{j}", l - 1)];
                            if self.width > 1 {
                                d.push(format!("l{}_{}", l - 1, (j + 1) % self.width));
                            }
                            d
                        };
                        task(&mut s, &format!("l{l}_{j}"), &deps);
                    }
                }
            }
            Kind::Grid => {
                for r in 0..self.depth {
                    for c in 0..self.width {
                        let mut deps = Vec::new();
                        if r > 0 {
                            deps.push(format!("g{}_{c}", r - 1));
                        }
                        if c > 0 {
                            deps.push(format!("g{r}_{}", c - 1));
                        }
                        task(&mut s, &format!("g{r}_{c}"), &deps);
                    }
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(shape: Shape) {
        let flow = shape.flow("/bin/true");
        let v = ferry_flow::validate(&flow, "shape.yaml")
            .unwrap_or_else(|p| panic!("{shape:?} is not a valid flow: {p:?}"));
        assert_eq!(v.flow().tasks.len(), shape.tasks(), "{shape:?}");
    }

    #[test]
    fn every_shape_is_a_valid_flow_of_the_size_it_says() {
        for kind in [Kind::Fanout, Kind::Fanin, Kind::Chain, Kind::Lattice, Kind::Grid] {
            valid(Shape {
                kind,
                width: 7,
                depth: 5,
            });
        }
    }

    #[test]
    fn a_grid_depends_on_above_and_left() {
        let flow = Shape {
            kind: Kind::Grid,
            width: 3,
            depth: 2,
        }
        .flow("true");
        assert!(
            flow.contains("{ id: g1_2, runner: local, command: [\"true\"], dependsOn: [g0_2, g1_1] }"),
            "{flow}"
        );
        assert_eq!(
            Shape {
                kind: Kind::Grid,
                width: 3,
                depth: 2
            }
            .critical_path(),
            4
        );
    }
}
