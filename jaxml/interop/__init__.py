"""Conversion between jaxml parameter trees and Hugging Face checkpoint layouts (numpy only)."""
