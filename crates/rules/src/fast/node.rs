//! The fast path's expression tree: what a rule expression of the subset compiles to.

use crate::history::HistoryFn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    Value,
    Baseline,
    Previous,
    Key,
    Path,
    Metric,
    Connected,
    LastSeen,
    SchemaErrors,
    /// The variable of `file.exists(k, ...)` / `file.all(k, ...)`: a key.
    Iter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaField {
    Mode,
    DirMode,
    Uid,
    Gid,
    Size,
    Format,
    Exists,
    ParseError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrTest {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

/// A compiled expression of the subset.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Lit(Lit),
    Var(Var),
    Meta(MetaField),
    HostId,
    HostLabel(String),
    FileKey(String),
    /// `file[k]` with a computed key.
    FileAt(Box<Node>),
    /// `file.exists(k, p)`, `file.all(k, p)` (`k` is [`Var::Iter`] in `p`).
    FileExists(Box<Node>),
    FileAll(Box<Node>),
    /// `has(file.K)`, `'K' in file`.
    FileHas(Box<Node>),
    /// `size(file)`.
    FileSize,
    History(HistoryFn, i64),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<[Node; 3]>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    IsNumber(Box<Node>),
    IsMasked(Box<Node>),
    ToDouble(Box<Node>),
    ToInt(Box<Node>),
    ToString(Box<Node>),
    Size(Box<Node>),
    StrTest(StrTest, Box<Node>, Box<Node>),
    Matches(Box<Node>, regex::Regex),
    InList(Box<Node>, Vec<Node>),
}
