"""The page's look: the Gradio theme and the few style rules the components need."""

from __future__ import annotations

import gradio as gr

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="amber")
CSS = """
.pg-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.pg-progress-fill { height: 100%; background: var(--primary-500); transition: width 0.5s; }
.pg-answer textarea { font-size: 0.95rem; line-height: 1.45; }
.pg-meta { font-size: 0.85rem; opacity: 0.8; min-height: 1.5em; }
/* A chat column's own "clear" empties only the browser's copy of the conversation: the next turn would bring it
   back, so it is hidden (New chat is the way to start over). */
.pg-answer button[aria-label="Clear"] { display: none; }
/* Why this answer: tokens stay one flowing text (a token is often part of a word), and the shades, which Gradio lays
   at half opacity over the page, carry the theme's text colour: black on them is unreadable in the dark theme. */
.pg-explain .token.highlighted { margin: 0 1px; padding: 0 1px; }
.dark .pg-explain .token, .dark .pg-explain .token *, .dark .pg-explain .legend-item {
    color: var(--body-text-color) !important; }
"""
