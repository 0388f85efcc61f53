//! Maps a configuration key path (`volumes[1].devices[0]`) to its line in the YAML text, so
//! errors found after parsing (unknown references, duplicates) still name a line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of every key and sequence item, by key path.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Indexes `text`; on a YAML syntax error the index is empty (the parser reports it).
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        Self {
            lines: builder.lines,
        }
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
    }
}
