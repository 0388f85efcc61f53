//! Maps a configuration key path (`volumes[1].devices[0]`) to its line in the YAML text, so
//! errors found after parsing (unknown references, duplicates) still name a line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every key and sequence item, by key path.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    too_deep: Option<usize>,
}

/// Deepest nesting of mappings and sequences a configuration may have (the real ones need
/// 4); deeper text is refused before any work that grows with depth.
pub const MAX_DEPTH: usize = 32;

impl LineIndex {
    /// Indexes `text`; on a YAML syntax error the index is empty (the parser reports it).
    pub fn new(text: &str) -> Self {
        // The YAML scanner holds a flow collection's tokens until it closes, so the event
        // check below would never see `[[[[...`: count brackets first.
        if let Some(line) = flow_too_deep(text) {
            return Self {
                too_deep: Some(line),
                ..Self::default()
            };
        }
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            // The deserializer reports the syntax error; too-deep nesting found before it is
            // still reported first (the deserializer is slow on it).
            return Self {
                too_deep: builder.too_deep,
                ..Self::default()
            };
        }
        Self {
            lines: builder.lines,
            too_deep: builder.too_deep,
        }
    }

    /// The line where nesting passed [`MAX_DEPTH`], if it did.
    pub fn too_deep(&self) -> Option<usize> {
        self.too_deep
    }

    /// The line of `path`, or of its nearest indexed ancestor.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// The line where flow brackets (`[`, `{`) outside quotes and comments nest deeper than
/// [`MAX_DEPTH`]. Brackets inside plain scalars count too: the check errs on the safe side.
fn flow_too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut prev = b'\n';
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match (quote, b) {
            (_, b'\n') => {
                line += 1;
                // Plain flow scalars may span lines; quoted ones too, so keep `quote`.
            }
            (Some(b'"'), b'\\') => {
                bytes.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            // A quote opens a quoted scalar only where a scalar starts (`it's` is plain).
            (None, b'"' | b'\'') if prev.is_ascii_whitespace() || b"[{,:-".contains(&prev) => {
                quote = Some(b);
            }
            (None, b'#') if prev.is_ascii_whitespace() => {
                // A comment: skip to the end of the line.
                for c in bytes.by_ref() {
                    if c == b'\n' {
                        line += 1;
                        break;
                    }
                }
                prev = b'\n';
                continue;
            }
            (None, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(line);
                }
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = b;
    }
    None
}

enum Frame {
    /// A mapping; `key` is the key whose value comes next, if any.
    Map { key: Option<String> },
    /// A sequence; `next` is the index of the next item.
    Seq { next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<(String, Frame)>,
    lines: HashMap<String, usize>,
    too_deep: Option<usize>,
}

impl Builder {
    /// The path of the value that starts now, advancing the parent's state.
    fn enter_value(&mut self, line: usize) -> Option<String> {
        let (base, frame) = self.stack.last_mut()?;
        let path = match frame {
            Frame::Map { key } => {
                let key = key.take()?;
                if base.is_empty() {
                    key
                } else {
                    format!("{base}.{key}")
                }
            }
            Frame::Seq { next } => {
                let path = format!("{base}[{next}]");
                *next += 1;
                path
            }
        };
        self.lines.entry(path.clone()).or_insert(line);
        Some(path)
    }

    fn on_scalar(&mut self, value: String, line: usize) {
        if let Some((base, Frame::Map { key })) = self.stack.last_mut() {
            if key.is_none() {
                let path = if base.is_empty() {
                    value.clone()
                } else {
                    format!("{base}.{value}")
                };
                self.lines.insert(path, line);
                *key = Some(value);
                return;
            }
        }
        self.enter_value(line);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        if self.too_deep.is_some() {
            return;
        }
        if self.stack.len() >= MAX_DEPTH
            && matches!(ev, Event::MappingStart(..) | Event::SequenceStart(..))
        {
            self.too_deep = Some(line);
            return;
        }
        match ev {
            Event::Scalar(value, ..) => self.on_scalar(value, line),
            Event::MappingStart(..) => {
                let path = self.enter_value(line).unwrap_or_default();
                self.stack.push((path, Frame::Map { key: None }));
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(line).unwrap_or_default();
                self.stack.push((path, Frame::Seq { next: 0 }));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.enter_value(line);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_items() {
        let text = "a: 1\nlist:\n  - name: x\n    devs: [p, q]\n  - name: y\n";
        let index = LineIndex::new(text);
        assert_eq!(index.line_of("a"), Some(1));
        assert_eq!(index.line_of("list"), Some(2));
        assert_eq!(index.line_of("list[0].name"), Some(3));
        assert_eq!(index.line_of("list[0].devs[1]"), Some(4));
        assert_eq!(index.line_of("list[1].name"), Some(5));
        assert_eq!(index.line_of("list[1].missing"), Some(5));
        assert_eq!(index.too_deep(), None);
    }

    #[test]
    fn deep_nesting_is_found_in_linear_time() {
        let n = 100_000;
        let text = format!("a: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert_eq!(LineIndex::new(&text).too_deep(), Some(1));
        let text = format!(
            "a: {}1{}\n",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(LineIndex::new(&text).too_deep(), None);
        // An apostrophe inside a plain scalar does not hide the brackets after it.
        let text = format!("m: it's\nb: {}\n", "[".repeat(n));
        assert_eq!(LineIndex::new(&text).too_deep(), Some(2));
        // Brackets in quotes and comments do not count.
        let text = format!("a: '{0}'\nb: \"{0}\"  # {0}\n", "[".repeat(100));
        assert_eq!(LineIndex::new(&text).too_deep(), None);
    }
}
