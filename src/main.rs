//! The `streammask` command. Everything lives in the library; this only hands over to the CLI.

// glibc malloc showed up as ~19 % of the proxy's CPU under streaming load (many short-lived
// event buffers per request, plus `malloc_consolidate` on large frees); mimalloc's per-thread
// free lists make those allocations cheap. Figures: bench/README.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    streammask::app::cli::main()
}
