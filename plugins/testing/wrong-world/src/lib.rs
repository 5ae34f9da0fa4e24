//! Exports a greeting instead of a wasmcast plugin interface.

wit_bindgen::generate!({
    inline: "
        package example:greeter;
        world greeter {
            export greet: func(name: string) -> string;
        }
    ",
});

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
