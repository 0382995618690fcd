"""May this caller make this request? The compiled state, its holder, and the one admission decision."""
