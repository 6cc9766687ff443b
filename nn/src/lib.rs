//! Layers of LLaMA-CoLA (ColaLinear, attention, MLP, decoder block, model); built on the tape.
