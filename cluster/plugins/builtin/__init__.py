"""Built-in plugins: headers, direct responses, Lua scripts and Envoy ExtProc."""
