//! Colour for a terminal, nothing otherwise: ANSI SGR codes around a cell.

#[derive(Clone, Copy)]
pub(super) struct Paint {
    on: bool,
}

impl Paint {
    pub(super) fn new(on: bool) -> Self {
        Self { on }
    }

    fn sgr(self, code: &str, text: &str) -> String {
        if self.on && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub(super) fn bold(self, text: &str) -> String {
        self.sgr("1", text)
    }

    pub(super) fn dim(self, text: &str) -> String {
        self.sgr("2", text)
    }

    pub(super) fn red(self, text: &str) -> String {
        self.sgr("31", text)
    }

    pub(super) fn green(self, text: &str) -> String {
        self.sgr("32", text)
    }

    pub(super) fn yellow(self, text: &str) -> String {
        self.sgr("33", text)
    }

    /// `text` in the colour of how an incident ended: green when healthy again, plain when only
    /// reported, red otherwise.
    pub(super) fn outcome(self, outcome: &str, text: &str) -> String {
        match outcome {
            "healthy" | "active" => self.green(text),
            "reported" => text.to_owned(),
            _ => self.red(text),
        }
    }
}
