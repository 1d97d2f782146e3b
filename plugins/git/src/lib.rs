//! Built-in source: git remotes through a local bare mirror, checked out into scratch trees
