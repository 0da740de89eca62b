//! The parsed document with the byte span of every key and value (`toml::de::DeTable`), kept next
//! to the typed config so that every problem, even one found after deserialization, has a line.
//!
//! Paths are written `a.b.2.c` (a number is an array index); no key of the schema contains a dot
//! or is a number.

use std::borrow::Cow;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

/// A spanned value of the document.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// A visitor of string values: their path, their span, the string (which it may replace).
pub(crate) type StringVisitor<'f, 'i> = dyn FnMut(&[Seg], Range<usize>, &mut Cow<'i, str>) + 'f;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// `a.b.2.c` → `[Key(a), Key(b), Index(2), Key(c)]`.
pub(crate) fn path(text: &str) -> Vec<Seg> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split('.')
        .map(|part| match part.parse() {
            Ok(index) => Seg::Index(index),
            Err(_) => Seg::Key(part.to_owned()),
        })
        .collect()
}

/// `[Key(registers), Index(2), Key(kind)]` → `registers[2].kind`.
pub(crate) fn display(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn child<'a, 'i>(value: &'a Value<'i>, seg: &Seg) -> Option<&'a Value<'i>> {
    match (value.get_ref(), seg) {
        (DeValue::Table(table), Seg::Key(key)) => table.get(key.as_str()),
        (DeValue::Array(array), Seg::Index(i)) => array.get(*i),
        _ => None,
    }
}

/// The value at `path`.
pub(crate) fn get<'a, 'i>(root: &'a Value<'i>, path: &[Seg]) -> Option<&'a Value<'i>> {
    path.iter().try_fold(root, |value, seg| child(value, seg))
}

/// The span of the value at `path`, else of its nearest ancestor that exists (a key left at
/// its default is reported on its table's header).
pub(crate) fn span_or_ancestor(root: &Value<'_>, path: &[Seg]) -> Range<usize> {
    let mut value = root;
    for seg in path {
        match child(value, seg) {
            Some(next) => value = next,
            None => break,
        }
    }
    value.span()
}

/// The string at `path`, if it is one.
pub(crate) fn string<'a>(root: &'a Value<'_>, path: &[Seg]) -> Option<&'a str> {
    match get(root, path)?.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => None,
    }
}

/// What an error span points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hit {
    /// A key, at this path.
    Key(Vec<Seg>),
    /// A value, at this path.
    Value(Vec<Seg>),
}

/// The deepest key or value of the tree whose span is `span` (or, for a value, contains it).
pub(crate) fn locate(root: &Value<'_>, span: &Range<usize>) -> Option<Hit> {
    fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
        outer.start <= inner.start && inner.end <= outer.end
    }
    fn visit(value: &Value<'_>, here: &mut Vec<Seg>, span: &Range<usize>) -> Option<Hit> {
        match value.get_ref() {
            DeValue::Table(table) => {
                for (key, child) in table.iter() {
                    here.push(Seg::Key(key.get_ref().to_string()));
                    if key.span() == *span {
                        return Some(Hit::Key(here.clone()));
                    }
                    if let Some(hit) = visit(child, here, span) {
                        return Some(hit);
                    }
                    here.pop();
                }
            }
            DeValue::Array(array) => {
                for (i, child) in array.iter().enumerate() {
                    here.push(Seg::Index(i));
                    if let Some(hit) = visit(child, here, span) {
                        return Some(hit);
                    }
                    here.pop();
                }
            }
            _ => {}
        }
        (value.span() == *span || contains(&value.span(), span) && !here.is_empty())
            .then(|| Hit::Value(here.clone()))
    }
    visit(root, &mut Vec::new(), span)
}

/// Removes the entry or element at `path`; false if there is none.
pub(crate) fn remove(root: &mut Value<'_>, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let mut value = root;
    for seg in parent {
        let next = match (value.get_mut(), seg) {
            (DeValue::Table(table), Seg::Key(key)) => table.get_mut(key.as_str()),
            (DeValue::Array(array), Seg::Index(i)) => array.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return false,
        }
    }
    match (value.get_mut(), last) {
        (DeValue::Table(table), Seg::Key(key)) => table.remove(key.as_str()).is_some(),
        (DeValue::Array(array), Seg::Index(i)) if *i < array.len() => {
            let old = std::mem::replace(array, DeArray::new());
            *array = old
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, v)| v)
                .collect();
            true
        }
        _ => false,
    }
}

/// Adds `key = value` to the table at `table`; false if there is no table there.
pub(crate) fn insert<'i>(root: &mut Value<'i>, table: &[Seg], key: &str, value: Value<'i>) -> bool {
    let mut here = root;
    for seg in table {
        let next = match (here.get_mut(), seg) {
            (DeValue::Table(t), Seg::Key(k)) => t.get_mut(k.as_str()),
            (DeValue::Array(a), Seg::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => here = next,
            None => return false,
        }
    }
    match here.get_mut() {
        DeValue::Table(t) => {
            let span = value.span();
            t.insert(Spanned::new(span, Cow::Owned(key.to_owned())), value);
            true
        }
        _ => false,
    }
}

/// Calls `f` on every string value, with its path and span; `f` may replace it.
pub(crate) fn for_each_string_mut<'i>(root: &mut Value<'i>, f: &mut StringVisitor<'_, 'i>) {
    fn visit<'i>(value: &mut Value<'i>, here: &mut Vec<Seg>, f: &mut StringVisitor<'_, 'i>) {
        let span = value.span();
        match value.get_mut() {
            DeValue::String(s) => f(here, span, s),
            DeValue::Table(table) => visit_table(table, here, f),
            DeValue::Array(array) => {
                for (i, child) in array.iter_mut().enumerate() {
                    here.push(Seg::Index(i));
                    visit(child, here, f);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    fn visit_table<'i>(
        table: &mut DeTable<'i>,
        here: &mut Vec<Seg>,
        f: &mut StringVisitor<'_, 'i>,
    ) {
        for (key, child) in table.iter_mut() {
            here.push(Seg::Key(key.get_ref().to_string()));
            visit(child, here, f);
            here.pop();
        }
    }
    visit(root, &mut Vec::new(), f);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Value<'_> {
        let table = DeTable::parse(text).unwrap();
        let span = table.span();
        Spanned::new(span, DeValue::Table(table.into_inner()))
    }

    #[test]
    fn paths_round_trip_through_text() {
        let p = path("sources.2.registers.0.kind");
        assert_eq!(display(&p), "sources[2].registers[0].kind");
        assert!(path("").is_empty());
    }

    #[test]
    fn values_and_keys_are_found_by_path_and_by_span() {
        let text = "[a]\nb = [ { c = 1 }, { c = 2 } ]\n";
        let root = doc(text);
        let two = get(&root, &path("a.b.1.c")).unwrap();
        assert_eq!(&text[two.span()], "2");
        assert_eq!(
            locate(&root, &two.span()),
            Some(Hit::Value(path("a.b.1.c")))
        );
        let DeValue::Table(a) = get(&root, &path("a")).unwrap().get_ref() else {
            panic!()
        };
        let key = a.get_key_value("b").unwrap().0.span();
        assert_eq!(&text[key.clone()], "b");
        assert_eq!(locate(&root, &key), Some(Hit::Key(path("a.b"))));
        assert_eq!(
            span_or_ancestor(&root, &path("a.b.1.zzz")),
            get(&root, &path("a.b.1")).unwrap().span()
        );
    }

    #[test]
    fn entries_and_elements_are_removed() {
        let mut root = doc("[a]\nb = [1, 2, 3]\nc = 4\n");
        assert!(remove(&mut root, &path("a.b.1")));
        assert!(remove(&mut root, &path("a.c")));
        assert!(!remove(&mut root, &path("a.c")));
        assert!(!remove(&mut root, &path("a.b.7")));
        let b = get(&root, &path("a.b")).unwrap();
        let DeValue::Array(b) = b.get_ref() else {
            panic!()
        };
        assert_eq!(b.len(), 2);
    }
}
